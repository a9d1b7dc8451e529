// SPDX-License-Identifier: MIT
pragma solidity 0.8.24;

interface IMultiSigWithdraw {
    function withdraw() external;
}

/// @notice Test-only trainer contract: accepts its payout, refuses it, or tries to re-enter
/// withdraw() from its receive hook (the re-entrancy test for MultiSigContract.withdraw).
contract TrainerProbe {
    enum Mode { Accept, Reject, Reenter }

    Mode public mode;
    uint256 public received;
    bool public reentryFailed;

    function setMode(Mode mode_) external {
        mode = mode_;
    }

    function claim(address wallet) external {
        IMultiSigWithdraw(wallet).withdraw();
    }

    receive() external payable {
        require(mode != Mode.Reject, "trainer refuses payment");
        received += msg.value;
        if (mode == Mode.Reenter) {
            // must fail: the credit was zeroed before the call (checks-effects-interactions)
            try IMultiSigWithdraw(msg.sender).withdraw() {
                reentryFailed = false;
            } catch {
                reentryFailed = true;
            }
        }
    }
}
