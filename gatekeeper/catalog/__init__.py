"""The intent catalog: its YAML schema, the loader, checks the schema cannot express, the built-in
out-of-scope pack and labelled data files (the importer's input)."""
