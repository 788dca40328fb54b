"""The project's PKI: root CA, certificate issuing, identities, kit signatures."""
