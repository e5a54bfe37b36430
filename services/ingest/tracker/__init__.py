"""The browser tracker (strata.js) and how ingest serves it at GET /t.js."""
