"""Statistics and metrics: what the stages counted, read at scrape time."""
