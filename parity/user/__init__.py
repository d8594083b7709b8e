"""parity/user"""
