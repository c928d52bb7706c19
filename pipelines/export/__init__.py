"""Exports for other tools: CASE/UCO JSON-LD bundles courts re-verify without Qarina
(`bundle`, `case`, `verify_bundle`) and JSON lines for bulk loading (`jsonl`)."""
