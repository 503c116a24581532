"""Identity for `qlp serve`: users and roles, password hashing, access tokens (JWT), refresh
tokens and API keys (opaque, stored as sha256), and where the signing keys come from.

base.py holds the types the API layer sees (Role, Principal, TokenPair, SecretProvider);
service.py (AuthService) is what it calls.
"""
