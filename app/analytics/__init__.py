"""Creator analytics: usage and earnings of one API, from SQL aggregates."""
