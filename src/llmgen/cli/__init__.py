"""The `llmgen` command: a thin Typer layer that parses, calls the library and renders.

main.py is the entry point (errors to one line, exit codes); app.py declares the commands, one module each
(generate.py, chat.py, tokenize.py, ...); console.py is the one place that writes to the terminal.
"""
