"""What an upstream is: its flavor and repair policy, what it says about itself, model families."""
