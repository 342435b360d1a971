"""Foundation: what every layer shares (data/cache folders, console helpers, model loading, errors,
the procedural problem generator). Imports only the contract and third-party libraries."""
