// Keeps the support library non-empty when tests/support has no sources yet.
