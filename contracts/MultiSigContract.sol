// SPDX-License-Identifier: MIT
pragma solidity 0.8.24;

/// @title MultiSigContract: validator owners jointly reward a trainer (dtnbus Layer 2).
/// @notice Seed-compatible interface (constructor, propose/confirm/execute, public getters)
/// with the seed's defects fixed, plus `proposeReward`: the proposal of a reward the validators
/// committed on Layer 1, indexed by its contents so that it can be proposed, and paid, once.
/// Payment is *pull*: executing a proposal books `rewards[destination] += value` and reserves
/// that much of the wallet's balance; the trainer collects it with `withdraw()`.
/// See docs/contracts.md for why pull, the storage layout and the gas table.
/// @dev One storage word per proposal, written once when proposed (the only fresh slot a
/// proposal costs) and updated in place by every confirmation and by the execution:
///   bits   0..159  destination
///   bits 160..223  value in gwei (uint64: 1.8e10 BNB; values are whole gwei)
///   bits 224..254  confirmedBy: bit 224 + k <=> owners[k] has confirmed (so at most 31 owners)
///   bit  255       executed
/// A proposal exists iff its word is non-zero (its destination never is). Confirmations are
/// counted by popcount: no step loops over owners. `totalOwed`, `transactionCount` and
/// `_ownerCount` share one slot that the constructor makes non-zero, so neither the first
/// proposal nor the first execution pays for a fresh slot.
contract MultiSigContract {
    /// @notice Largest owner set: one bit per owner in a proposal's word.
    uint256 public constant MAX_OWNERS = 31;

    uint256 private constant GWEI = 1e9;
    uint256 private constant VALUE_MASK = type(uint64).max;
    uint256 private constant CONFIRMED_SHIFT = 224;
    uint256 private constant EXECUTED = 1 << 255;
    uint256 private constant REWARD_INDEX = 1 << 255; // top bit: beyond any uint64 count

    /// @notice Confirmations a proposal needs before it can be executed.
    uint256 public immutable numSignaturesRequired;
    address[] public owners;
    /// @notice BNB credited by executed proposals and not yet withdrawn, per beneficiary.
    mapping(address => uint256) public rewards;

    /// @notice Sum of `rewards`: the part of the balance that belongs to beneficiaries.
    uint128 public totalOwed;
    /// @notice Number of `proposeTransaction` proposals; their indexes are 0 .. count - 1.
    /// Reward proposals are indexed by `rewardIndex` instead and not counted here.
    uint64 public transactionCount;
    uint64 private _ownerCount; // shares the slot above and keeps it non-zero (see @dev)

    mapping(address => uint256) private _ownerBit; // 1 << (224 + k) for owners[k]; 0: none
    mapping(uint256 => uint256) private _proposals; // index => the packed word above

    error TooManyOwners();
    error InvalidThreshold();
    error ZeroOwner();
    error DuplicateOwner();
    error NotAnOwner();
    error ZeroDestination();
    error ValueNotWholeGwei();
    error ValueTooLarge();
    error ZeroRewardId();
    error ZeroAmount();
    error RewardAlreadyProposed();
    error UnknownTransaction();
    error AlreadyExecuted();
    error AlreadyConfirmed();
    error NotConfirmed();
    error NotEnoughConfirmations();
    error InsufficientBalance();
    error NothingToWithdraw();
    error PayoutFailed();

    event Deposit(address indexed sender, uint256 amount);
    /// @notice `rewardId` links a reward proposal to its Layer 1 entry (zero for the others).
    event Proposal(
        uint256 indexed txIndex,
        address indexed proposer,
        address indexed destination,
        uint256 value,
        bytes32 rewardId
    );
    event Confirmation(uint256 indexed txIndex, address indexed owner);
    event Revocation(uint256 indexed txIndex, address indexed owner);
    event Execution(
        uint256 indexed txIndex, address indexed executor, address indexed destination, uint256 value
    );
    event Payout(address indexed beneficiary, uint256 amount);

    constructor(uint256 numSignaturesRequired_, address[] memory owners_) {
        uint256 n = owners_.length;
        if (n > MAX_OWNERS) revert TooManyOwners();
        if (numSignaturesRequired_ == 0 || numSignaturesRequired_ > n) revert InvalidThreshold();
        for (uint256 i = 0; i < n; i++) {
            address owner = owners_[i];
            if (owner == address(0)) revert ZeroOwner();
            if (_ownerBit[owner] != 0) revert DuplicateOwner();
            _ownerBit[owner] = 1 << (CONFIRMED_SHIFT + i);
        }
        owners = owners_;
        numSignaturesRequired = numSignaturesRequired_;
        _ownerCount = uint64(n);
    }

    /// @notice Accepts BNB that funds future rewards.
    receive() external payable {
        emit Deposit(msg.sender, msg.value);
    }

    /// @notice Proposes paying `value` wei (whole gwei) to `destination`; returns the index.
    /// The proposer does not confirm implicitly (as in the seed): they call confirmTransaction.
    function proposeTransaction(address destination, uint256 value) external returns (uint256) {
        _callerBit();
        uint256 txIndex = transactionCount;
        transactionCount = uint64(txIndex + 1);
        _proposals[txIndex] = _pack(destination, value);
        emit Proposal(txIndex, msg.sender, destination, value, 0);
        return txIndex;
    }

    /// @notice Proposes the Layer 1 reward `rewardId` (pay `amount` wei to `trainer`) and
    /// confirms it as the proposer, whose validator checked the committed entry first.
    /// Its index is `rewardIndex(rewardId, trainer, amount)`: the same reward can be proposed
    /// only once, and a proposal with other contents under the same id (which no correct
    /// validator confirms) cannot block the real one.
    function proposeReward(
        bytes32 rewardId, address trainer, uint256 amount
    ) external returns (uint256 txIndex) {
        uint256 bit = _callerBit();
        if (rewardId == 0) revert ZeroRewardId();
        if (amount == 0) revert ZeroAmount();
        txIndex = rewardIndex(rewardId, trainer, amount);
        if (_proposals[txIndex] != 0) revert RewardAlreadyProposed();
        _proposals[txIndex] = _pack(trainer, amount) | bit;
        emit Proposal(txIndex, msg.sender, trainer, amount, rewardId);
        emit Confirmation(txIndex, msg.sender);
    }

    function confirmTransaction(uint256 txIndex) external {
        uint256 bit = _callerBit();
        uint256 word = _pending(txIndex);
        if (word & bit != 0) revert AlreadyConfirmed();
        _proposals[txIndex] = word | bit;
        emit Confirmation(txIndex, msg.sender);
    }

    function revokeConfirmation(uint256 txIndex) external {
        uint256 bit = _callerBit();
        uint256 word = _pending(txIndex);
        if (word & bit == 0) revert NotConfirmed();
        _proposals[txIndex] = word & ~bit;
        emit Revocation(txIndex, msg.sender);
    }

    /// @notice Books the reward for the trainer once enough owners have confirmed. Reverts,
    /// rather than over-committing, if the unreserved balance cannot cover `value`.
    function executeTransaction(uint256 txIndex) external {
        _callerBit();
        uint256 word = _pending(txIndex);
        if (_popcount(word >> CONFIRMED_SHIFT) < numSignaturesRequired) {
            revert NotEnoughConfirmations();
        }
        uint256 value = ((word >> 160) & VALUE_MASK) * GWEI;
        uint256 owed = totalOwed + value;
        if (owed > address(this).balance) revert InsufficientBalance();
        // effects only: no external call here, the trainer pulls with withdraw()
        _proposals[txIndex] = word | EXECUTED;
        totalOwed = uint128(owed); // owed <= balance < 2^128
        address destination = address(uint160(word));
        rewards[destination] += value;
        emit Execution(txIndex, msg.sender, destination, value);
    }

    /// @notice Pays the caller everything executed proposals have credited to them.
    function withdraw() external {
        uint256 amount = rewards[msg.sender];
        if (amount == 0) revert NothingToWithdraw();
        // checks-effects-interactions: zero the credit before the call, so a re-entrant
        // withdraw finds nothing and the books stay balanced during the call
        rewards[msg.sender] = 0;
        totalOwed -= uint128(amount);
        emit Payout(msg.sender, amount);
        (bool ok, ) = payable(msg.sender).call{value: amount}("");
        if (!ok) revert PayoutFailed();
    }

    // ---- views -------------------------------------------------------------------------------

    /// @notice The index of a reward proposal: the hash of its contents with the top bit set,
    /// which no `proposeTransaction` index (a uint64 count) reaches.
    function rewardIndex(
        bytes32 rewardId, address trainer, uint256 amount
    ) public pure returns (uint256) {
        return uint256(keccak256(abi.encode(rewardId, trainer, amount))) | REWARD_INDEX;
    }

    /// @notice Seed-compatible getter: (destination, value, executed).
    function transactions(
        uint256 txIndex
    ) external view returns (address destination, uint256 value, bool executed) {
        uint256 word = _existing(txIndex);
        return (address(uint160(word)), ((word >> 160) & VALUE_MASK) * GWEI, word >= EXECUTED);
    }

    /// @notice Seed-compatible getter: has `owner` confirmed proposal `txIndex`?
    function confirmations(uint256 txIndex, address owner) external view returns (bool) {
        return _existing(txIndex) & _ownerBit[owner] != 0;
    }

    function confirmationCount(uint256 txIndex) external view returns (uint256) {
        return _popcount(_existing(txIndex) >> CONFIRMED_SHIFT);
    }

    function isOwner(address account) external view returns (bool) {
        return _ownerBit[account] != 0;
    }

    function ownerCount() external view returns (uint256) {
        return _ownerCount;
    }

    function getOwners() external view returns (address[] memory) {
        return owners;
    }

    // ---- internals ---------------------------------------------------------------------------

    /// @dev The caller's confirmation bit; reverts unless the caller is an owner.
    function _callerBit() private view returns (uint256 bit) {
        bit = _ownerBit[msg.sender];
        if (bit == 0) revert NotAnOwner();
    }

    function _pack(address destination, uint256 value) private pure returns (uint256) {
        if (destination == address(0)) revert ZeroDestination();
        if (value % GWEI != 0) revert ValueNotWholeGwei();
        if (value / GWEI > VALUE_MASK) revert ValueTooLarge();
        return uint256(uint160(destination)) | ((value / GWEI) << 160);
    }

    function _existing(uint256 txIndex) private view returns (uint256 word) {
        word = _proposals[txIndex];
        if (word == 0) revert UnknownTransaction();
    }

    function _pending(uint256 txIndex) private view returns (uint256 word) {
        word = _existing(txIndex);
        if (word >= EXECUTED) revert AlreadyExecuted();
    }

    /// @dev Set bits among the 31 confirmation bits (SWAR popcount: constant gas).
    function _popcount(uint256 bits) private pure returns (uint256 x) {
        unchecked {
            x = bits & 0x7fffffff;
            x -= (x >> 1) & 0x55555555;
            x = (x & 0x33333333) + ((x >> 2) & 0x33333333);
            x = (x + (x >> 4)) & 0x0f0f0f0f;
            x = ((x * 0x01010101) >> 24) & 0xff;
        }
    }
}
