/*
 * rpc_tls.h — TLS and mutual TLS for the gRPC control plane, with certificates re-read
 * from disk when their files change (checked on each handshake, so rotation needs no
 * restart).
 */
#ifndef MP_HOST_RPC_TLS_H
#define MP_HOST_RPC_TLS_H

#include <grpc/grpc_security.h>
#include <stddef.h>

#include "config.h"

typedef struct mp_rpc_tls mp_rpc_tls;

/* Reads the files once (so a bad path fails at start, not at the first handshake) and
 * builds server credentials whose fetcher reloads them. *creds is owned by the caller
 * (grpc_server_credentials_release); *out by the caller (mp_rpc_tls_destroy), and must
 * outlive the credentials. */
int mp_rpc_tls_create(const mp_grpc_cfg *cfg, mp_rpc_tls **out, grpc_server_credentials **creds,
                      char *err, size_t err_len);
void mp_rpc_tls_destroy(mp_rpc_tls *tls);

#endif
