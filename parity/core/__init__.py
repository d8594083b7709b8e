"""parity/core"""
