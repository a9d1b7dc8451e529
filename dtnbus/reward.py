"""A reward as an ordinary Layer 1 transaction of a typed kind, and its validation.

A reward transaction is `MAGIC + msgpack([reward_id, trainer, amount_wei, model_id, reason])`:
reward_id 32 bytes, trainer the 20 address bytes, amount_wei a decimal string (it can exceed
msgpack's 64-bit integers), model_id and reason text. Any other transaction on the bus is
opaque data and is left alone. `parse_reward` refuses a malformed one with one line saying
what is wrong: the CLI refuses it before submitting, and a payout agent skips (and counts)
one that another client committed anyway.

Amounts are whole gwei, up to 2^64 - 1 gwei: the wallet stores a proposal in one word
(docs/contracts.md). A reward's on-chain proposal index is `reward_index`, the same hash of
its contents the contract's `rewardIndex` computes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import msgpack
from eth_utils import is_checksum_address, keccak, to_checksum_address

from dtnbus.errors import LocalError

MAGIC = b"dtnbus/reward\x01"
GWEI = 10**9
WEI_PER_BNB = 10**18
MAX_AMOUNT_WEI = (2**64 - 1) * GWEI
MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}")
MAX_REASON = 256
_REWARD_INDEX_BIT = 1 << 255


class RewardError(LocalError):
    """A malformed reward: refused at submission, skipped by a payout agent."""


@dataclass(frozen=True, slots=True)
class Reward:
    reward_id: bytes  # 32 bytes
    trainer: str  # EIP-55 checksummed address
    amount_wei: int
    model_id: str
    reason: str = ""

    def encode(self) -> bytes:
        """The transaction bytes that go into a signed Layer 1 request."""
        return MAGIC + msgpack.packb(
            [self.reward_id, bytes.fromhex(self.trainer[2:]), str(self.amount_wei),
             self.model_id, self.reason], use_bin_type=True)

    @property
    def index(self) -> int:
        """The wallet's index of this reward's proposal (the contract's `rewardIndex`)."""
        return reward_index(self.reward_id, self.trainer, self.amount_wei)

    @property
    def id_hex(self) -> str:
        return "0x" + self.reward_id.hex()

    def same_payment(self, other: Reward) -> bool:
        """Same id, trainer and amount: the same on-chain proposal (model id and reason are
        Layer 1 bookkeeping)."""
        return (self.reward_id, self.trainer, self.amount_wei) == (
            other.reward_id, other.trainer, other.amount_wei)


def reward_index(reward_id: bytes, trainer: str, amount_wei: int) -> int:
    """keccak256(abi.encode(bytes32 rewardId, address trainer, uint256 amount)) | 2^255."""
    encoded = reward_id + bytes(12) + bytes.fromhex(trainer[2:]) + amount_wei.to_bytes(32, "big")
    return int.from_bytes(keccak(encoded), "big") | _REWARD_INDEX_BIT


def is_reward(tx: bytes) -> bool:
    return tx.startswith(MAGIC)


def parse_reward(tx: bytes) -> Reward:
    """Decode and validate a reward transaction (RewardError says what is wrong)."""
    if not is_reward(tx):
        raise RewardError("not a reward transaction")
    try:
        fields = msgpack.unpackb(tx[len(MAGIC):], raw=False, use_list=True, max_bin_len=64,
                                 max_str_len=1024, max_array_len=8)
    except Exception:
        raise RewardError("reward is not valid msgpack") from None
    if not isinstance(fields, list) or len(fields) != 5:
        raise RewardError("reward must hold [reward_id, trainer, amount_wei, model_id, reason]")
    reward_id, trainer, amount, model_id, reason = fields
    if not isinstance(trainer, bytes) or len(trainer) != 20:
        raise RewardError("reward trainer must be 20 address bytes")
    if not isinstance(amount, str) or not re.fullmatch(r"[1-9][0-9]{0,40}", amount):
        raise RewardError("reward amount must be a positive whole number of wei")
    return make_reward(reward_id, to_checksum_address(trainer), int(amount), model_id, reason)


def make_reward(reward_id: object, trainer: str, amount_wei: int, model_id: object,
                reason: object = "") -> Reward:
    """A validated Reward from typed parts."""
    if not isinstance(reward_id, bytes) or len(reward_id) != 32 or not any(reward_id):
        raise RewardError("reward id must be 32 bytes, not all zero")
    check_trainer(trainer)
    check_amount(amount_wei)
    if not isinstance(model_id, str) or not MODEL_ID.fullmatch(model_id):
        raise RewardError(f"model id {model_id!r} must be 1-64 letters, digits or . _ : / -, "
                          "starting with a letter or digit (e.g. m-17)")
    if not isinstance(reason, str) or len(reason) > MAX_REASON or not reason.isprintable():
        raise RewardError(f"reason must be printable text of at most {MAX_REASON} characters")
    return Reward(reward_id, trainer, amount_wei, model_id, reason)


def check_trainer(trainer: str) -> str:
    if not isinstance(trainer, str) or not re.fullmatch(r"0x[0-9a-fA-F]{40}", trainer):
        raise RewardError(f"trainer {trainer!r} is not an address (0x and 40 hex digits)")
    if int(trainer, 16) == 0:
        raise RewardError("trainer is the zero address: nobody could withdraw the reward")
    if not is_checksum_address(trainer):
        raise RewardError(f"trainer {trainer} has no valid EIP-55 checksum (a typo?); if the "
                          f"address is right, write it as {to_checksum_address(trainer)}")
    return trainer


def check_amount(amount_wei: int) -> int:
    if not isinstance(amount_wei, int) or isinstance(amount_wei, bool) or amount_wei <= 0:
        raise RewardError(f"amount must be positive, got {amount_wei} wei")
    if amount_wei % GWEI:
        raise RewardError(f"amount {amount_wei} wei is not a whole number of gwei "
                          "(1e-9 BNB): the wallet pays whole gwei")
    if amount_wei > MAX_AMOUNT_WEI:
        raise RewardError(f"amount {amount_wei} wei is above the wallet's limit of "
                          f"{MAX_AMOUNT_WEI} wei")
    return amount_wei


def parse_amount(text: str) -> int:
    """'0.5' (BNB, at most 9 decimals) -> wei."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise RewardError(f"amount {text!r} is not a number of BNB (e.g. 0.5)") from None
    if not value.is_finite() or value <= 0:
        raise RewardError(f"amount must be a positive number of BNB, got {text!r}")
    wei = value * WEI_PER_BNB
    if wei != wei.to_integral_value() or int(wei) % GWEI:
        raise RewardError(f"amount {text} has more than 9 decimals: rewards are whole gwei")
    return check_amount(int(wei))


def format_bnb(wei: int) -> str:
    """wei as BNB without trailing zeros: 500000000000000000 -> '0.5'."""
    text = f"{Decimal(wei) / WEI_PER_BNB:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def derive_reward_id(trainer: str, model_id: str, amount_wei: int) -> bytes:
    """The id of a reward given without --reward-id: the same trainer, model and amount is
    the same reward (submitting it again is answered with the first payment)."""
    return keccak(b"dtnbus reward id\x00" + bytes.fromhex(trainer[2:])
                  + model_id.encode() + b"\x00" + amount_wei.to_bytes(32, "big"))


def parse_reward_id(text: str) -> bytes:
    """--reward-id: 0x and 64 hex digits as they are, or a label (hashed into 32 bytes)."""
    text = text.strip()
    if re.fullmatch(r"0x[0-9a-fA-F]{64}", text):
        raw = bytes.fromhex(text[2:])
        if not any(raw):
            raise RewardError("reward id must not be all zero")
        return raw
    if text.startswith("0x") or not 0 < len(text) <= 64 or not text.isprintable():
        raise RewardError(f"reward id {text!r} must be 0x and 64 hex digits, or a label of "
                          "1-64 printable characters")
    return keccak(b"dtnbus reward label\x00" + text.encode())
