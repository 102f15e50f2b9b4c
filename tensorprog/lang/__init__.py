"""The language: program text -> syntax tree -> AST -> lowered, verified IR."""
