"""`climc`, Ferry's command-line client (Cloudpods style), built on `ferry_client`.

Layout: `main` builds the parser and maps errors to exit codes; `parser` holds
the Cloudpods-style help formatter and the command registry; `output` renders
tables and JSON; `views` says which columns and fields each resource shows;
one module per resource group (`images`, `servers`, `serial`, `hosts`, `tasks`)
registers its commands; `waiting` follows a task for `--wait`.
A new group (e.g. migrations) is one more module with a `register(registry)`
function, listed in `main.COMMAND_MODULES`.
"""
