"""Homomorphic encryption of model updates: the only home of tenseal in fedsec.

The scheme is BFV (TenSEAL 0.3.18 over Microsoft SEAL) with one fixed parameter set, in
fedsec.he.params: polynomial degree N = 4096, coefficient moduli of 56 + 53 bits (109 bits,
the 128-bit-security limit for N = 4096) and a 43-bit batching plain modulus. Encryption is
symmetric: every client of a federation holds the same secret key, the server holds none.

Each model value is clipped, scaled by 2**f and stochastically rounded to an integer of one
slot (42 bits, f up to 38: below float32's resolution of a model's weights) and a ciphertext
holds 4096 slots, so an encrypted model takes about 15 bytes per parameter. The client context (with the secret
key) serializes to ~62 KB, the server context (parameters only) to ~90 bytes. Up to 16
contributions summed in one ciphertext decrypt exactly.

Modules:

- params: the numbers (no tenseal import; safe anywhere).
- context: make the client/server contexts and load them with their checks.
- codec: the encrypted model container "FSH1": encrypt, sum (server side), decrypt.

Nothing outside this package imports tenseal; errors from TenSEAL are translated here into
HEError or WireError.
"""
