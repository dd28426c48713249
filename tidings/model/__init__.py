"""The declared model: collections, their fields and rules, and channel namespaces, from Python
or TOML; below everything that reads it (schema, store, resolvers, realtime)."""
