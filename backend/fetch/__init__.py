"""Getting a task's image bytes: URL parsing, the fetch policy, the bounded transport, auth."""
