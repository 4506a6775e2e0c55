/*
 * plugin_loader.h — turning a .so file into a validated plugin image: permission
 * checks, content hash, a private copy named by that hash (so a rebuilt file is a new
 * dlopen, not the cached old handle), dlopen with RTLD_LOCAL, and descriptor checks.
 */
#ifndef MP_HOST_PLUGIN_LOADER_H
#define MP_HOST_PLUGIN_LOADER_H

#include <stddef.h>

#include "host.h"

/* Refuses a directory that is missing, not a directory, or writable by group/others.
 * 0 or negative errno with the reason. */
int mp_plugin_dir_check(const char *dir, char *err, size_t err_len);

/* The *.so files of `dir`, sorted by name, as a NULL-terminated malloc'd array of
 * malloc'd absolute paths (free with mp_plugin_list_free). */
int mp_plugin_list(const char *dir, char ***out, char *err, size_t err_len);
void mp_plugin_list_free(char **paths);

/* SHA-256 of a file, as 64 hex chars + NUL. */
int mp_file_sha256(const char *path, char out[65], char *err, size_t err_len);

/* Load `path`, reusing an image of `h` with the same content hash. cache_dir receives
 * the private copy. On success *out has one reference for the caller. */
int mp_plugin_image_load(mp_host *h, const char *path, const char *cache_dir,
                         mp_plugin_image **out, char *err, size_t err_len);
/* Load a private copy this host made earlier (kept for Rollback) as it is, without
 * copying it again. The image keeps the file when it is unloaded. */
int mp_plugin_image_load_private(mp_host *h, const char *copy_path, mp_plugin_image **out,
                                 char *err, size_t err_len);
void mp_plugin_image_ref(mp_plugin_image *img);
/* Drops a reference; at zero the image is unlinked from h, dlclose'd and its private
 * copy deleted. */
void mp_plugin_image_unref(mp_host *h, mp_plugin_image *img);

/* Check a descriptor as returned by a plugin's entry point. */
int mp_plugin_descriptor_check(const mp_plugin_descriptor *d, const char *path, char *err,
                               size_t err_len);

#endif
