"""parity/backends"""
