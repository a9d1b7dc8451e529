// SPDX-License-Identifier: MIT
pragma solidity 0.8.24;

/// @title MultiSigContract: validator owners jointly reward a trainer (dtnbus Layer 2).
/// @notice Seed-compatible interface (constructor, propose/confirm/execute, public getters)
/// with the seed's defects fixed. Payment is *pull*: executing a proposal books
/// `rewards[destination] += value` and reserves that much of the wallet's balance; the trainer
/// collects it with `withdraw()`. See docs/contracts.md for why pull, and for the gas table.
/// @dev Storage is laid out for gas (30 owners / threshold 3 must cost no more than the seed):
/// - owner checks and confirmations use a 1-based owner position and a per-proposal bitmap,
///   so confirm and execute are O(1) and never loop over owners;
/// - a proposal's second slot is written non-zero at proposal time (`exists`), so each
///   confirmation is a non-zero -> non-zero write (2,900 gas) rather than a fresh slot (20,000);
/// - `totalOwed`, `transactionCount` and `_ownerCount` share one slot that the constructor makes
///   non-zero, so the first proposal and the first execution do not pay for a fresh slot either.
contract MultiSigContract {
    /// @notice Largest owner set: one bit per owner in a proposal's confirmation bitmap.
    uint256 public constant MAX_OWNERS = 224;

    struct Payment {
        // slot 0: what to pay
        address destination;
        uint96 value; // 2^96 wei is ~7.9e10 BNB: more than exists
        // slot 1: voting state
        bool exists;
        bool executed;
        uint16 numConfirmations;
        uint224 confirmedBy; // bit k set <=> owners[k] has confirmed
    }

    // storage, not immutable: brownie's coverage cannot map a contract with immutables
    uint256 public numSignaturesRequired;
    address[] public owners;
    /// @notice BNB credited by executed proposals and not yet withdrawn, per beneficiary.
    mapping(address => uint256) public rewards;

    /// @notice Sum of `rewards`: the part of the balance that belongs to beneficiaries.
    uint128 public totalOwed;
    /// @notice Number of proposals; valid indexes are 0 .. transactionCount - 1.
    uint64 public transactionCount;
    uint64 private _ownerCount; // shares the slot above and keeps it non-zero (see @dev)

    mapping(address => uint256) private _ownerPosition; // owners index + 1; 0: not an owner
    mapping(uint256 => Payment) private _proposals;

    event Deposit(address indexed sender, uint256 amount);
    event Proposal(
        uint256 indexed txIndex, address indexed proposer, address indexed destination, uint256 value
    );
    event Confirmation(uint256 indexed txIndex, address indexed owner);
    event Revocation(uint256 indexed txIndex, address indexed owner);
    event Execution(
        uint256 indexed txIndex, address indexed executor, address indexed destination, uint256 value
    );
    event Payout(address indexed beneficiary, uint256 amount);

    constructor(uint256 numSignaturesRequired_, address[] memory owners_) {
        uint256 n = owners_.length;
        require(n <= MAX_OWNERS, "too many owners");
        require(numSignaturesRequired_ > 0 && numSignaturesRequired_ <= n, "invalid threshold");
        for (uint256 i = 0; i < n; i++) {
            address owner = owners_[i];
            require(owner != address(0), "zero owner");
            require(_ownerPosition[owner] == 0, "duplicate owner");
            _ownerPosition[owner] = i + 1;
        }
        owners = owners_;
        numSignaturesRequired = numSignaturesRequired_;
        _ownerCount = uint64(n);
    }

    /// @notice Accepts BNB that funds future rewards.
    receive() external payable {
        emit Deposit(msg.sender, msg.value);
    }

    /// @notice Proposes paying `value` wei to `destination`; returns the proposal's index.
    /// The proposer does not confirm implicitly (as in the seed): they call confirmTransaction.
    function proposeTransaction(address destination, uint256 value) external returns (uint256) {
        require(_ownerPosition[msg.sender] != 0, "not an owner");
        require(destination != address(0), "zero destination");
        require(value <= type(uint96).max, "value too large");
        uint256 txIndex = transactionCount;
        transactionCount = uint64(txIndex + 1);
        _proposals[txIndex] = Payment({
            destination: destination,
            value: uint96(value),
            exists: true,
            executed: false,
            numConfirmations: 0,
            confirmedBy: 0
        });
        emit Proposal(txIndex, msg.sender, destination, value);
        return txIndex;
    }

    function confirmTransaction(uint256 txIndex) external {
        uint256 bit = _ownerBit(msg.sender);
        Payment storage p = _pending(txIndex);
        require(p.confirmedBy & bit == 0, "already confirmed");
        p.confirmedBy |= uint224(bit);
        p.numConfirmations += 1;
        emit Confirmation(txIndex, msg.sender);
    }

    function revokeConfirmation(uint256 txIndex) external {
        uint256 bit = _ownerBit(msg.sender);
        Payment storage p = _pending(txIndex);
        require(p.confirmedBy & bit != 0, "not confirmed");
        p.confirmedBy &= ~uint224(bit);
        p.numConfirmations -= 1;
        emit Revocation(txIndex, msg.sender);
    }

    /// @notice Books the reward for the trainer once enough owners have confirmed. Reverts,
    /// rather than over-committing, if the unreserved balance cannot cover `value`.
    function executeTransaction(uint256 txIndex) external {
        require(_ownerPosition[msg.sender] != 0, "not an owner");
        Payment storage p = _pending(txIndex);
        require(p.numConfirmations >= numSignaturesRequired, "not enough confirmations");
        uint128 owed = totalOwed + p.value;
        require(owed <= address(this).balance, "insufficient balance");
        // effects only: no external call here, the trainer pulls with withdraw()
        p.executed = true;
        totalOwed = owed;
        address destination = p.destination;
        rewards[destination] += p.value;
        emit Execution(txIndex, msg.sender, destination, p.value);
    }

    /// @notice Pays the caller everything executed proposals have credited to them.
    function withdraw() external {
        uint256 amount = rewards[msg.sender];
        require(amount > 0, "nothing to withdraw");
        // checks-effects-interactions: zero the credit before the call, so a re-entrant
        // withdraw finds nothing and the books stay balanced during the call
        rewards[msg.sender] = 0;
        totalOwed -= uint128(amount);
        emit Payout(msg.sender, amount);
        (bool ok, ) = payable(msg.sender).call{value: amount}("");
        require(ok, "payout failed");
    }

    // ---- views -------------------------------------------------------------------------------

    /// @notice Seed-compatible getter: (destination, value, executed).
    function transactions(
        uint256 txIndex
    ) external view returns (address destination, uint256 value, bool executed) {
        Payment storage p = _existing(txIndex);
        return (p.destination, p.value, p.executed);
    }

    /// @notice Seed-compatible getter: has `owner` confirmed proposal `txIndex`?
    function confirmations(uint256 txIndex, address owner) external view returns (bool) {
        Payment storage p = _existing(txIndex);
        uint256 position = _ownerPosition[owner];
        return position != 0 && (p.confirmedBy >> (position - 1)) & 1 == 1;
    }

    function confirmationCount(uint256 txIndex) external view returns (uint256) {
        return _existing(txIndex).numConfirmations;
    }

    function isOwner(address account) external view returns (bool) {
        return _ownerPosition[account] != 0;
    }

    function ownerCount() external view returns (uint256) {
        return _ownerCount;
    }

    function getOwners() external view returns (address[] memory) {
        return owners;
    }

    // ---- internals ---------------------------------------------------------------------------

    function _ownerBit(address account) private view returns (uint256) {
        uint256 position = _ownerPosition[account];
        require(position != 0, "not an owner");
        return 1 << (position - 1);
    }

    function _existing(uint256 txIndex) private view returns (Payment storage p) {
        p = _proposals[txIndex];
        require(p.exists, "unknown transaction");
    }

    function _pending(uint256 txIndex) private view returns (Payment storage p) {
        p = _existing(txIndex);
        require(!p.executed, "already executed");
    }
}
