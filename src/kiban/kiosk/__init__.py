"""Kiosk certificate issuance (証明書交付センター, コンビニ交付; SPEC K6)."""
