"""What runs inside Orthanc besides the callbacks: the supervisor of the worker processes, the REST
proxy to the lead worker and the note sender. Nothing here calls Orthanc; host.py does that."""
