"""The arq adapter: msgq's worker loop on arq (`MsgqWorker`), its claim script, the wake that
ends an idle poll, lock upkeep and the build of arq's options. The only importer of arq besides
`msgq.arq_format`; a move to another queue library rewrites this package alone."""
