"""parity/optim"""
