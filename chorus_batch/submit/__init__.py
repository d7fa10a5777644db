"""Submission to the site's central Azure container (the CHoRUS upload procedure), by job:

  central.py   the container: sign-in, writing a blob with its Content-MD5 (checked against the bytes
               sent), listing a version's folder, reading a blob back
  upload.py    `upload`: plan each version's change set against the ledger, send it, record it in
               batches, check it, and put the manifest's copy next to it
  verify.py    `verify`: the ledger against the container (listing), or the bytes (--download)
  script.py    `upload --script bash|azcopy` and `mark-uploaded --from-log`: for sites whose security
               review allows only the Azure CLI or AzCopy

The ledger itself is in store/uploads.py.
"""
