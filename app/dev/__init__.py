"""The embedded development stack (`billing dev`); imports dev-only packages lazily."""
