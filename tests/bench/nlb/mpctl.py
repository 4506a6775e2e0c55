#!/usr/bin/python3
# mpctl.py — the benchmark's only gRPC call: registers (or re-registers) one external
# module with marchproxy's NLBService so the host forwards a listener's TCP connections to
# it through its byte pump. run.sh generates the stubs from $SRCDIR/proto at run time and
# passes their directory; nothing is imported from the integration suite, so this runs
# with nothing but Debian's python3-grpcio and python3-protobuf.
#
#   mpctl.py STUBDIR GRPC_ADDR register INSTANCE_ID BACKEND_ADDR
#
# The heartbeat interval asked for (120 s, threshold 3) outlasts any benchmark run, so no
# heartbeats need to be sent while measuring.

import sys


def main(argv):
    if len(argv) != 6 or argv[3] != "register":
        sys.stderr.write("usage: mpctl.py STUBDIR GRPC_ADDR register INSTANCE_ID "
                         "BACKEND_ADDR\n")
        return 2
    stubdir, grpc_addr, _, instance_id, backend = argv[1:]
    sys.path.insert(0, stubdir)
    import grpc
    from marchproxy import nlb_pb2, nlb_pb2_grpc, types_pb2

    # No proxy from the environment, and a quick reconnect while the host is starting.
    options = [("grpc.enable_http_proxy", 0),
               ("grpc.initial_reconnect_backoff_ms", 100),
               ("grpc.max_reconnect_backoff_ms", 250)]
    with grpc.insecure_channel(grpc_addr, options=options) as ch:
        try:
            grpc.channel_ready_future(ch).result(timeout=15)
        except grpc.FutureTimeoutError:
            sys.stderr.write(f"mpctl: no gRPC server at {grpc_addr} after 15 s\n")
            return 1
        nlb = nlb_pb2_grpc.NLBServiceStub(ch)
        req = nlb_pb2.RegisterModuleRequest(
            instance=types_pb2.ModuleInstance(instance_id=instance_id,
                                              module_type=types_pb2.MODULE_TYPE_ALB,
                                              address=backend),
            initial_routes=[types_pb2.Route(route_id="all", protocol=types_pb2.PROTOCOL_TCP)],
            health_config=types_pb2.HealthCheckConfig(interval_seconds=120,
                                                      unhealthy_threshold=3))
        try:
            resp = nlb.RegisterModule(req, timeout=10, wait_for_ready=True)
        except grpc.RpcError as e:
            sys.stderr.write(f"mpctl: RegisterModule: {e.code().name}: {e.details()}\n")
            return 1
        if not resp.success:
            sys.stderr.write(f"mpctl: RegisterModule refused: {resp.message}\n")
            return 1
        print(f"mpctl: {resp.message}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
