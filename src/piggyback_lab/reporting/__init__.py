"""Result tables and figures built from run records and the published numbers."""
