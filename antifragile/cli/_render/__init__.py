"""What the CLI prints: rich tables, progress lines and JSON documents of result models.

Commands parse their arguments, call a client function that returns a result model, and
hand that model to a renderer here, one module per command group; nothing here talks to a
server.
"""
