"""Tables of the core services (audit, events, identifiers, municipality master).

Each service keeps its tables in its own module here; `import_all_models` finds them.
"""
