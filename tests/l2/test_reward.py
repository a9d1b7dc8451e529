"""The reward transaction: encoding, validation at submission, and the proposal index the
wallet computes on chain."""

from __future__ import annotations

import pytest
from eth_abi import encode
from eth_utils import keccak

from dtnbus.reward import (
    MAGIC,
    RewardError,
    derive_reward_id,
    format_bnb,
    is_reward,
    make_reward,
    parse_amount,
    parse_reward,
    parse_reward_id,
    reward_index,
)

TRAINER = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"  # the EIP-55 spec's example
RID = keccak(text="r1")


def test_reward_round_trips_through_its_bytes():
    reward = make_reward(RID, TRAINER, 5 * 10**17, "m-17", "best loss on round 3")
    tx = reward.encode()
    assert tx.startswith(MAGIC) and is_reward(tx)
    assert parse_reward(tx) == reward


def test_index_is_the_contracts_reward_index():
    amount = 123 * 10**9
    expected = int.from_bytes(keccak(encode(["bytes32", "address", "uint256"],
                                            [RID, TRAINER, amount])), "big") | 1 << 255
    assert reward_index(RID, TRAINER, amount) == expected
    assert make_reward(RID, TRAINER, amount, "m-1").index == expected


@pytest.mark.parametrize("trainer, error", [
    ("0x5aaeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "no valid EIP-55 checksum"),
    ("0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed", "write it as 0x5aAeb6053F3E"),
    ("0x" + "00" * 20, "zero address"),
    ("5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "not an address"),
    ("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeA", "not an address"),
])
def test_bad_trainer_is_refused_with_one_line(trainer, error):
    with pytest.raises(RewardError, match=error) as info:
        make_reward(RID, trainer, 10**18, "m-17")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("amount, error", [
    ("0", "positive"), ("-1", "positive"), ("abc", "not a number"), ("nan", "positive"),
    ("0.0000000001", "more than 9 decimals"), ("1e11", "above the wallet's limit"),
])
def test_bad_amount_is_refused(amount, error):
    with pytest.raises(RewardError, match=error):
        parse_amount(amount)


def test_amounts_parse_in_bnb_to_whole_gwei():
    assert parse_amount("0.5") == 5 * 10**17
    assert parse_amount("0.000000001") == 10**9
    assert format_bnb(5 * 10**17) == "0.5" and format_bnb(10**18) == "1"


@pytest.mark.parametrize("model_id", ["", "m 17", "-m17", "x" * 65, "m\n17", 17])
def test_bad_model_id_is_refused(model_id):
    with pytest.raises(RewardError, match="model id"):
        make_reward(RID, TRAINER, 10**18, model_id)


def test_other_bad_parts_are_refused():
    with pytest.raises(RewardError, match="32 bytes"):
        make_reward(bytes(32), TRAINER, 10**18, "m-1")
    with pytest.raises(RewardError, match="whole number of gwei"):
        make_reward(RID, TRAINER, 10**18 + 1, "m-1")
    with pytest.raises(RewardError, match="reason"):
        make_reward(RID, TRAINER, 10**18, "m-1", "x" * 257)


@pytest.mark.parametrize("tx, error", [
    (b"plain data", "not a reward"),
    (MAGIC + b"\xc1", "not valid msgpack"),
    (MAGIC + b"\x93\x01\x02\x03", "must hold"),
])
def test_malformed_reward_bytes_are_refused(tx, error):
    with pytest.raises(RewardError, match=error):
        parse_reward(tx)


def test_reward_ids_given_or_derived():
    assert parse_reward_id("0x" + "ab" * 32) == bytes.fromhex("ab" * 32)
    assert parse_reward_id("epoch-7") == parse_reward_id("epoch-7") != parse_reward_id("e8")
    with pytest.raises(RewardError):
        parse_reward_id("0x1234")
    with pytest.raises(RewardError):
        parse_reward_id("0x" + "00" * 32)
    same = derive_reward_id(TRAINER, "m-17", 10**18)
    assert same == derive_reward_id(TRAINER, "m-17", 10**18)
    assert same != derive_reward_id(TRAINER, "m-18", 10**18)
    assert same != derive_reward_id(TRAINER, "m-17", 2 * 10**18)
