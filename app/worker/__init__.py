"""arq workers: thin job functions that call the services."""
