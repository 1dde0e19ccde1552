/*
 * shardkit_pg: the shard-key hash of shardkit's hash distributions, as SQL
 * functions on a shard, so that the server itself can tell the rows of a
 * hash slice apart (an online move then keeps no key lists; see
 * rebalancer/shard_objects.h, "Keys of a moving slice").
 *
 *   shardkit.hash_key_v1(int8) / (text) / (uuid) -> int8
 *
 * Each returns XXH3_64bits(EncodeKey(key), seed 0) (include/shardkit/key.h,
 * "The hash encoding", version 1) minus 2^63, i.e. with its top bit
 * flipped, so that int8 order is the hash's unsigned order and a slice
 * [lo, hi) of the hash space reads
 *   hash_key_v1(k) >= lo - 2^63 AND hash_key_v1(k) < hi - 2^63.
 * int2 and int4 columns reach the int8 function by PostgreSQL's implicit
 * casts (the encoding is the value as a 64-bit integer for every width);
 * varchar reaches the text one. Text is hashed as its UTF-8 bytes, converted
 * from the database's encoding when that is not UTF8.
 *
 * The functions are created by shardctl (`shardctl hash install`, which
 * runs internal::InstallServerHashSql) with this module's path; the mover
 * checks that a shard's functions agree with the library's HashKey before
 * it relies on them.
 */
#include "postgres.h"

#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/uuid.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

PG_MODULE_MAGIC;

static int64
ordered(XXH64_hash_t h)
{
	return (int64) (h ^ UINT64CONST(0x8000000000000000));
}

PG_FUNCTION_INFO_V1(shardkit_hash_key_v1_int8);
Datum
shardkit_hash_key_v1_int8(PG_FUNCTION_ARGS)
{
	uint64		v = (uint64) PG_GETARG_INT64(0);
	unsigned char buf[8];
	int			i;

	for (i = 0; i < 8; i++)
		buf[i] = (unsigned char) (v >> (8 * i));	/* little endian */
	PG_RETURN_INT64(ordered(XXH3_64bits(buf, sizeof(buf))));
}

PG_FUNCTION_INFO_V1(shardkit_hash_key_v1_text);
Datum
shardkit_hash_key_v1_text(PG_FUNCTION_ARGS)
{
	text	   *t = PG_GETARG_TEXT_PP(0);
	const char *bytes = VARDATA_ANY(t);
	int			len = VARSIZE_ANY_EXHDR(t);
	XXH64_hash_t h;

	if (GetDatabaseEncoding() == PG_UTF8 || GetDatabaseEncoding() == PG_SQL_ASCII)
		h = XXH3_64bits(bytes, len);
	else
	{
		char	   *utf8 = pg_server_to_any(bytes, len, PG_UTF8);

		/* Unconverted (nothing to convert), it is the input: not
		 * NUL-terminated. */
		h = XXH3_64bits(utf8, utf8 == bytes ? (size_t) len : strlen(utf8));
		if (utf8 != bytes)
			pfree(utf8);
	}
	PG_RETURN_INT64(ordered(h));
}

PG_FUNCTION_INFO_V1(shardkit_hash_key_v1_uuid);
Datum
shardkit_hash_key_v1_uuid(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *u = PG_GETARG_UUID_P(0);

	PG_RETURN_INT64(ordered(XXH3_64bits(u->data, UUID_LEN)));
}
