"""The versioned machine API (/api/v1): integration clients, OAuth2 tokens and their endpoints."""
