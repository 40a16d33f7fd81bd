"""kpfast.ffx against the pyffx 0.3.0 oracle and the test vectors of semantics.md §3."""

import os

import pyffx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kpfast.ffx import ffx_decrypt, ffx_encrypt, ffx_table


@pytest.mark.parametrize("password", [b"password"] + [os.urandom(n) for n in (1, 16, 16, 100)],
                         ids=["password", "random1", "random16a", "random16b", "random100"])
def test_matches_pyffx_on_all_3_digit_inputs(password: bytes) -> None:
    oracle = pyffx.Integer(password, length=3)
    assert [ffx_encrypt(password, v, 3) for v in range(1000)] == [oracle.encrypt(v) for v in range(1000)]
    assert [ffx_decrypt(password, v, 3) for v in range(1000)] == [oracle.decrypt(v) for v in range(1000)]


def test_published_vector() -> None:
    assert pyffx.Integer(b"secret-key", length=4).encrypt(1234) == 6103
    assert ffx_encrypt(b"secret-key", 1234, 4) == 6103
    assert ffx_decrypt(b"secret-key", 6103, 4) == 1234


def test_table_vector_for_password() -> None:
    lut = ffx_table(b"password")
    assert len(lut) == 256
    assert lut[:8] == [355, 522, 858, 133, 916, 326, 747, 930]
    assert max(lut) == 996 and min(lut) == 2
    assert len(set(lut)) == 256


def test_table_is_encrypt_of_range() -> None:
    password = os.urandom(16)
    assert ffx_table(password, count=10, length=2) == [ffx_encrypt(password, v, 2) for v in range(10)]


@settings(max_examples=200, deadline=None)
@given(password=st.binary(min_size=1, max_size=40), length=st.integers(1, 60), data=st.data())
def test_roundtrip_and_pyffx_parity_any_length(password: bytes, length: int, data: st.DataObject) -> None:
    # Lengths above 48 digits exercise the chained HMAC digit stream.
    value = data.draw(st.integers(0, 10**length - 1))
    encrypted = ffx_encrypt(password, value, length)
    assert 0 <= encrypted < 10**length
    assert ffx_decrypt(password, encrypted, length) == value
    assert encrypted == pyffx.Integer(password, length=length).encrypt(value)


@pytest.mark.parametrize("value, length", [(-1, 3), (1000, 3), (5, 0), (1.0, 3)])
def test_rejects_out_of_range(value, length) -> None:
    with pytest.raises(ValueError):
        ffx_encrypt(b"k", value, length)
    with pytest.raises(ValueError):
        ffx_decrypt(b"k", value, length)


def test_table_rejects_bad_count() -> None:
    with pytest.raises(ValueError):
        ffx_table(b"k", count=1001, length=3)
