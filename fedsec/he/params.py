"""The HE parameters of fedsec: the one BFV parameter set and the fixed-point quantisation.

Every federation uses the same numbers; they are pinned here so a client and the server can
never disagree. Quantisation: a value x (already multiplied by the client's weight and
clipped to [-clip, clip]) becomes the integer floor(x * 2**f) + 1 with probability
frac(x * 2**f), else floor(x * 2**f) (stochastic rounding: unbiased), f = scale_bits(clip).
Each integer fills one plaintext slot; a sum of MAX_CLIENTS contributions, each at most
per_client_bound() in magnitude, stays inside a signed FIELD_BITS-bit field, below half the
plain modulus, and so decrypts exactly.

One value per slot, 42 bits wide, rather than two of 21 bits: f is 21 bits finer (2**-34 at
clip 4 for 16 sites, 2**-38 at clip 2 for 3), below float32's resolution of a model's weights,
so an HE average rounds to the float32 model plain arithmetic gives but for the odd last bit.
At 2**-13..2**-17, the rounding noise was above it, and local SGD carried it into a point of
accuracy within five rounds. The price: twice the ciphertexts (about 15 bytes per parameter).

This module never imports tenseal (fedsec.he.context turns these numbers into a context), so
configuration code can import it without the HE library.
"""

from __future__ import annotations

import math

from fedsec.errors import HEError

POLY_MODULUS_DEGREE = 4096  # N: slots per ciphertext
COEFF_MOD_BIT_SIZES = (56, 53)  # 109 bits: the 128-bit-security limit for N = 4096
PLAIN_MODULUS_BITS = 43  # a batching prime of this many bits
FIELD_BITS = 42  # W: a slot's signed value; |v| < 2**41 <= t/2 for the 43-bit plain modulus t
MAX_CLIENTS = 16  # the most contributions one encrypted sum may hold
DEFAULT_CLIP = 4.0
VALUES_PER_SLOT = 1

_MIN_SCALE_BITS = 4
_MAX_SCALE_BITS = FIELD_BITS  # never reached: a bound >= 1 caps f at FIELD_BITS - 2


def per_client_bound(max_clients: int = MAX_CLIENTS) -> int:
    """The largest magnitude of one contribution's integer so that max_clients of them sum exactly.

    Raises HEError unless 1 <= max_clients <= MAX_CLIENTS.
    """
    if isinstance(max_clients, bool) or not isinstance(max_clients, int) or not 1 <= max_clients <= MAX_CLIENTS:
        raise HEError(f"HE max_clients must be between 1 and {MAX_CLIENTS}, got {max_clients!r}")
    return ((1 << (FIELD_BITS - 1)) - 1) // max_clients


def scale_bits(clip: float, max_clients: int = MAX_CLIENTS) -> int:
    """The number of fraction bits f used for values clipped to [-clip, clip].

    The largest f such that ceil(max(clip, 1) * 2**f) * max_clients <= 2**(FIELD_BITS-1) - 1:
    a job that sums fewer sites gets a finer fixed point.
    The bound is taken at least 1 because the weight (at most 1) is encoded with the same f;
    ceil rather than round because stochastic rounding may round up. For clip >= 1 whose
    scaled value is an integer (the default 4.0 gives f = 34) this is the same as
    round(clip * 2**f) * MAX_CLIENTS <= 2**(FIELD_BITS-1) - 1.

    Raises HEError if clip is not a finite number > 0, or so large that f < 4.
    """
    if isinstance(clip, bool) or not isinstance(clip, int | float) or not math.isfinite(clip) or clip <= 0:
        raise HEError(f"HE clip must be a finite number > 0, got {clip!r}")
    bound = max(float(clip), 1.0)
    limit = per_client_bound(max_clients)
    for bits in range(_MAX_SCALE_BITS, _MIN_SCALE_BITS - 1, -1):
        if math.ceil(bound * 2.0**bits) <= limit:
            return bits
    raise HEError(
        f"HE clip {clip} is too large: values up to it leave fewer than {_MIN_SCALE_BITS} fraction bits "
        f"(at most {limit / 2**_MIN_SCALE_BITS} is allowed)"
    )


def quantised_weight(weight: float, clip: float, max_clients: int = MAX_CLIENTS) -> float:
    """The weight an upload's values are multiplied by once quantised: round(weight * 2**f) / 2**f.

    f = scale_bits(clip, max_clients), as fedsec.he.codec encodes it. Raises HEError as scale_bits does.
    """
    bits = scale_bits(clip, max_clients)
    return round(float(weight) * (1 << bits)) / (1 << bits)
