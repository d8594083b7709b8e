"""parity/io"""
