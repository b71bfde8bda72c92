"""The GCS emulator the object-store tests talk to: gcp-storage-emulator, served on 127.0.0.1.

    python tests/gcs_emulator.py PORT BUCKET

One compatibility fix over the stock package: its downloads carry no `x-goog-generation` header,
which real GCS always sends and tensorstore (Orbax's storage layer) needs to read an object it
wrote (without it: "Malformed StorageGeneration"). The header is added before the server module
binds its routes; everything else is the package as published.
"""

import sys
import threading

from gcp_storage_emulator.handlers import objects

_download = objects.download


def download(request, response, storage, *args, **kwargs):
  try:
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
  except Exception:  # noqa: BLE001 - a missing object is answered by the stock handler (404)
    pass
  return _download(request, response, storage, *args, **kwargs)


objects.download = download

from gcp_storage_emulator.server import create_server  # noqa: E402  (after the patch)

if __name__ == "__main__":
  port, bucket = int(sys.argv[1]), sys.argv[2]
  server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
  server.start()
  threading.Event().wait()
