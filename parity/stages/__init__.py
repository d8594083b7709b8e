"""parity/stages"""
