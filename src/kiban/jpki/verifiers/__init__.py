"""Verifier services of the JPKI analogue (署名検証者・利用者証明検証者向けサービス, SPEC K5).

The verifier registry (検証者の登録), credentials and usage counts, 新旧紐付け, 基本4情報 provision
with the holder's consent, the 発行記録 view and the CA operator's screen. docs/jpki-verifiers.md.
"""
