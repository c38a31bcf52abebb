/*
 * pgfanout_capture: the capture trigger in C, buffering a transaction's changes.
 *
 * The PL/pgSQL triggers insert one log row per changed row. Here each change is encoded at once as an
 * Avro Change record (schemas/change.avsc) into a buffer that lives as long as the transaction, and the
 * buffer goes into the log as one row at commit: one insert per transaction instead of one per row, and
 * the agent splices the encoded changes into its messages instead of encoding them itself.
 *
 * Ordering. A log row carries the ordinal of its first change in the transaction; the agent orders a
 * transaction's rows by it. Transactions are ordered by their largest log sequence number as before
 * (docs/ordering.md): the last row of a transaction is written at commit, after all its writes.
 *
 * Subtransactions. The buffer is a list of segments, each holding changes of one subtransaction (tagged
 * with its id). Subtransaction ids grow, and a subtransaction's descendants start after it, so the
 * segments of a subtransaction and its descendants are always the list's tail from the first segment
 * tagged with an id >= its own: rolling it back drops that tail. A buffer grown past FLUSH_BYTES is
 * written early, but only that tail for the current subtransaction: a log row belongs to the
 * subtransaction that inserts it and disappears with it, so it must not hold an enclosing level's changes.
 * (Only ids are compared, so loading this library inside a subtransaction loses nothing.)
 *
 * Values are each column's text as `column::text` gives it (the cast to text when the type has one, else
 * its output function), with the table's pinned session settings, as the PL/pgSQL triggers write them
 * (pinned only when the session's own would print differently, see settings_in_effect()).
 * The layout of a table (id, columns, key, old columns, settings) is read once per backend through
 * pgfanout.layout_of() and forgotten when the table's relcache entry is invalidated (ALTER TABLE,
 * CREATE TRIGGER); so is the log table last written (see LogTarget).
 *
 * Privileges. The layout query and the lookups of the current log table run as the owner of the trigger
 * function (the role that installed capture), as the PL/pgSQL triggers run SECURITY DEFINER: writers need
 * no rights on the pgfanout schema, and the functions these call are not executable by PUBLIC. The log
 * row itself is written without the executor, so without privilege checks (see map_log_columns()).
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/transam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "lib/stringinfo.h"
#include "nodes/makefuncs.h"
#include "nodes/pg_list.h"
#include "parser/parse_coerce.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/xid8.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(pgfanout_capture);

void		_PG_init(void);

#define FLUSH_BYTES (256 * 1024)

/* Change.op symbols, in schema order */
enum
{
	OP_INSERT, OP_UPDATE, OP_DELETE, OP_TRUNCATE
};

typedef enum
{
	TEXT_AS_IS,					/* text, varchar: already text */
	TEXT_BY_CAST,				/* a cast function to text (boolean, bpchar, inet, name...) */
	TEXT_BY_OUTPUT				/* the type's output function */
} TextMethod;

typedef struct Column
{
	AttrNumber	attnum;
	bool		byval;			/* the type's, for comparing old and new key values as stored */
	int16		length;
	TextMethod	method;
	FmgrInfo	function;
} Column;

typedef struct Layout
{
	Oid			relid;			/* hash key */
	bool		valid;
	int32		table_id;
	int			ncolumns;
	Column	   *columns;
	int			nkeys;
	int		   *keys;			/* indexes into columns */
	int			nolds;
	int		   *olds;			/* indexes into columns */
	int			nsettings;
	char	  **setting_names;
	char	  **setting_values;
} Layout;

typedef struct Segment
{
	SubTransactionId subid;		/* the subtransaction whose changes these are */
	int			offset;			/* in the buffer */
	int			length;
	int32		first_ordinal;
	int32		count;
	List	   *tables;			/* table ids, each once */
} Segment;

static HTAB *layouts = NULL;
static MemoryContext layout_context = NULL;

/*
 * The log table last written and what was learned about it, kept across transactions: looking the
 * tables up by name and checking the log table's columns each time cost about 1 us of the commit-time
 * write's 5-9 (docs/benchmarks.md). Forgotten when either relation's relcache entry is invalidated (ALTER, DROP, CREATE INDEX),
 * or when capture moves to the other log table.
 */
typedef struct LogTarget
{
	int32		log;			/* 1 or 2; 0 when nothing is known */
	Oid			relid;
	Oid			sequence;		/* pgfanout.log_seq */
	int		   *columns;		/* map_log_columns() of the table */
} LogTarget;

static LogTarget log_target = {0};

/* per transaction, in TopTransactionContext */
static StringInfo buffer = NULL;
static List *segments = NIL;
static int32 next_ordinal = 0;

static int32 current_log = 0;	/* agent_state.current_log as last read, 0 before */
static uint64 proc_changes = 0;	/* pg_proc invalidations seen, see on_proc_change() */
static uint64 current_log_as_of = 0;	/* proc_changes when current_log was read */
static SPIPlanPtr current_log_plan = NULL;
static SPIPlanPtr layout_plan = NULL;
static Oid	capture_owner = InvalidOid;	/* the trigger function's owner, as last seen */
static Oid	capture_function = InvalidOid;	/* whose owner that is; forgotten by on_proc_change() */

typedef struct Identity
{
	Oid			user;
	int			context;
} Identity;

static Identity
become_owner(void)
{
	Identity	saved;

	if (!OidIsValid(capture_owner))
		elog(ERROR, "pgfanout: capture owner unknown");
	GetUserIdAndSecContext(&saved.user, &saved.context);
	SetUserIdAndSecContext(capture_owner,
						   saved.context | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	return saved;
}

/* An error in between needs no restore: aborting the (sub)transaction restores the identity. */
static void
restore_identity(Identity saved)
{
	SetUserIdAndSecContext(saved.user, saved.context);
}

/* -- Avro ----------------------------------------------------------------------------------------- */

static void
put_long(StringInfo s, int64 value)
{
	uint64		z = ((uint64) value << 1) ^ (uint64) (value >> 63);
	char		bytes[10];
	int			n = 0;

	while (z & ~UINT64CONST(0x7F))
	{
		bytes[n++] = (char) ((z & 0x7F) | 0x80);
		z >>= 7;
	}
	bytes[n++] = (char) z;
	appendBinaryStringInfo(s, bytes, n);
}

static void
put_string(StringInfo s, const char *data, int length)
{
	put_long(s, length);
	appendBinaryStringInfo(s, data, length);
}

static void
put_int_array(StringInfo s, const int *items, int count)
{
	if (count > 0)
	{
		put_long(s, count);
		for (int i = 0; i < count; i++)
			put_long(s, items[i]);
	}
	put_long(s, 0);
}

static void
put_value(StringInfo s, Column *column, Datum value)
{
	text	   *t;

	switch (column->method)
	{
		case TEXT_AS_IS:
			t = DatumGetTextPP(value);
			put_string(s, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
			break;
		case TEXT_BY_CAST:
			t = DatumGetTextPP(FunctionCall1(&column->function, value));
			put_string(s, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
			break;
		case TEXT_BY_OUTPUT:
			{
				char	   *out = OutputFunctionCall(&column->function, value);

				put_string(s, out, strlen(out));
				break;
			}
	}
}

/* An array<string> of the given columns of tuple (NULL written as ""), then their array<int> of nulls. */
static void
put_values(StringInfo s, Layout *layout, const int *which, int count, HeapTuple tuple, TupleDesc desc)
{
	int		   *nulls = palloc(sizeof(int) * (count > 0 ? count : 1));
	int			nnulls = 0;

	if (count > 0)
	{
		put_long(s, count);
		for (int i = 0; i < count; i++)
		{
			Column	   *column = &layout->columns[which ? which[i] : i];
			bool		isnull;
			Datum		value = heap_getattr(tuple, column->attnum, desc, &isnull);

			if (isnull)
			{
				nulls[nnulls++] = i;
				put_long(s, 0);
			}
			else
				put_value(s, column, value);
		}
	}
	put_long(s, 0);
	put_int_array(s, nulls, nnulls);
}

/*
 * Whether an UPDATE changed the key. The PL/pgSQL triggers compare the key's text; values stored alike
 * have the same text, so the text is only made for a column whose old and new values are stored differently.
 */
static bool
key_changed(Layout *layout, HeapTuple old_row, HeapTuple new_row, TupleDesc desc)
{
	for (int i = 0; i < layout->nkeys; i++)
	{
		Column	   *column = &layout->columns[layout->keys[i]];
		bool		old_null, new_null;
		Datum		old_value = heap_getattr(old_row, column->attnum, desc, &old_null);
		Datum		new_value = heap_getattr(new_row, column->attnum, desc, &new_null);
		StringInfoData old_text, new_text;
		bool		differ;

		if (old_null || new_null)
		{
			if (old_null != new_null)
				return true;
			continue;
		}
		if (datumIsEqual(old_value, new_value, column->byval, column->length))
			continue;
		initStringInfo(&old_text);
		initStringInfo(&new_text);
		put_value(&old_text, column, old_value);
		put_value(&new_text, column, new_value);
		/* encoded: lengths first, and bytes that may be zero */
		differ = old_text.len != new_text.len || memcmp(old_text.data, new_text.data, old_text.len) != 0;
		pfree(old_text.data);
		pfree(new_text.data);
		if (differ)
			return true;
	}
	return false;
}

/* -- layouts -------------------------------------------------------------------------------------- */

static void
on_relation_change(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	Layout	   *layout;

	if (relid == InvalidOid || relid == log_target.relid || relid == log_target.sequence)
		log_target.log = 0;
	if (layouts == NULL)
		return;
	hash_seq_init(&status, layouts);
	while ((layout = hash_seq_search(&status)) != NULL)
		if (relid == InvalidOid || layout->relid == relid)
			layout->valid = false;
}

static int
column_index(Layout *layout, const char *name, Relation relation)
{
	AttrNumber	attnum = get_attnum(RelationGetRelid(relation), name);

	for (int i = 0; i < layout->ncolumns; i++)
		if (layout->columns[i].attnum == attnum)
			return i;
	ereport(ERROR,
			(errmsg("pgfanout: the layout of \"%s\" names column \"%s\", which is not among its columns",
					RelationGetRelationName(relation), name),
			 errhint("run pgfanout agent install again")));
	return -1;
}

/* Memory for what is kept across transactions: layouts and the log target. */
static MemoryContext
cache_context(void)
{
	if (layout_context == NULL)
		layout_context = AllocSetContextCreate(CacheMemoryContext, "pgfanout layouts", ALLOCSET_SMALL_SIZES);
	return layout_context;
}

static char **
text_array_items(Datum array, int *count)
{
	Datum	   *items;
	bool	   *nulls;
	char	  **texts;
	MemoryContext context = cache_context();

	deconstruct_array(DatumGetArrayTypeP(array), TEXTOID, -1, false, TYPALIGN_INT, &items, &nulls, count);
	texts = MemoryContextAlloc(context, sizeof(char *) * (*count > 0 ? *count : 1));
	for (int i = 0; i < *count; i++)
		texts[i] = MemoryContextStrdup(context, TextDatumGetCString(items[i]));
	return texts;
}

static void
read_layout(Layout *layout, Relation relation)
{
	Oid			argtypes[1] = {OIDOID};
	Datum		args[1] = {ObjectIdGetDatum(RelationGetRelid(relation))};
	TupleDesc	desc = RelationGetDescr(relation);
	HeapTuple	row;
	TupleDesc	rowdesc;
	bool		isnull;
	int			ncolumns, nkeys, nolds, nsettings;
	char	  **columns, **keys, **olds, **settings;

	Identity	caller;
	MemoryContext context = cache_context();

	caller = become_owner();
	SPI_connect();
	if (layout_plan == NULL)
	{
		layout_plan = SPI_prepare("SELECT table_id, columns, key_columns, old_columns, settings "
								  "FROM pgfanout.layout_of($1)", 1, argtypes);
		if (layout_plan == NULL)
			elog(ERROR, "pgfanout: could not prepare the layout query: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(layout_plan);
	}
	/* the latest snapshot: a REPEATABLE READ transaction must see the layout an ALTER TABLE just committed */
	if (SPI_execute_snapshot(layout_plan, args, NULL, GetLatestSnapshot(), InvalidSnapshot, true, false, 1)
		!= SPI_OK_SELECT)
		elog(ERROR, "pgfanout: the layout query failed");
	if (SPI_processed != 1)
		ereport(ERROR,
				(errmsg("pgfanout: table \"%s\" has a capture trigger but no layout in pgfanout.tables",
						RelationGetRelationName(relation)),
				 errhint("run pgfanout agent install again")));
	row = SPI_tuptable->vals[0];
	rowdesc = SPI_tuptable->tupdesc;
	layout->table_id = DatumGetInt32(SPI_getbinval(row, rowdesc, 1, &isnull));
	columns = text_array_items(SPI_getbinval(row, rowdesc, 2, &isnull), &ncolumns);
	keys = text_array_items(SPI_getbinval(row, rowdesc, 3, &isnull), &nkeys);
	olds = text_array_items(SPI_getbinval(row, rowdesc, 4, &isnull), &nolds);
	settings = text_array_items(SPI_getbinval(row, rowdesc, 5, &isnull), &nsettings);
	SPI_finish();
	restore_identity(caller);

	layout->ncolumns = ncolumns;
	layout->columns = MemoryContextAllocZero(context, sizeof(Column) * (ncolumns > 0 ? ncolumns : 1));
	for (int i = 0; i < ncolumns; i++)
	{
		Column	   *column = &layout->columns[i];
		AttrNumber	attnum = get_attnum(RelationGetRelid(relation), columns[i]);
		Oid			type, function;
		bool		varlena;

		if (attnum == InvalidAttrNumber || attnum <= 0 || TupleDescAttr(desc, attnum - 1)->attisdropped)
			ereport(ERROR,
					(errmsg("pgfanout: the layout of \"%s\" names column \"%s\", which the table does not have",
							RelationGetRelationName(relation), columns[i]),
					 errhint("run pgfanout agent install again")));
		column->attnum = attnum;
		column->byval = TupleDescAttr(desc, attnum - 1)->attbyval;
		column->length = TupleDescAttr(desc, attnum - 1)->attlen;
		type = TupleDescAttr(desc, attnum - 1)->atttypid;
		switch (find_coercion_pathway(TEXTOID, type, COERCION_EXPLICIT, &function))
		{
			case COERCION_PATH_RELABELTYPE:
				column->method = TEXT_AS_IS;
				break;
			case COERCION_PATH_FUNC:
				column->method = TEXT_BY_CAST;
				fmgr_info_cxt(function, &column->function, context);
				break;
			default:
				column->method = TEXT_BY_OUTPUT;
				getTypeOutputInfo(type, &function, &varlena);
				fmgr_info_cxt(function, &column->function, context);
				break;
		}
	}
	layout->nkeys = nkeys;
	layout->keys = MemoryContextAlloc(context, sizeof(int) * (nkeys > 0 ? nkeys : 1));
	for (int i = 0; i < nkeys; i++)
		layout->keys[i] = column_index(layout, keys[i], relation);
	layout->nolds = nolds;
	layout->olds = MemoryContextAlloc(context, sizeof(int) * (nolds > 0 ? nolds : 1));
	for (int i = 0; i < nolds; i++)
		layout->olds[i] = column_index(layout, olds[i], relation);
	if (nsettings % 2 != 0)
		elog(ERROR, "pgfanout: the settings of table %d are not name/value pairs", layout->table_id);
	layout->nsettings = nsettings / 2;
	layout->setting_names = MemoryContextAlloc(context, sizeof(char *) * (nsettings / 2 + 1));
	layout->setting_values = MemoryContextAlloc(context, sizeof(char *) * (nsettings / 2 + 1));
	for (int i = 0; i < nsettings / 2; i++)
	{
		layout->setting_names[i] = settings[2 * i];
		layout->setting_values[i] = settings[2 * i + 1];
	}
	layout->valid = true;
}

static Layout *
layout_of(Relation relation)
{
	Oid			relid = RelationGetRelid(relation);
	bool		found;
	Layout	   *layout;

	if (layouts == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(Layout);
		layouts = hash_create("pgfanout layouts", 64, &ctl, HASH_ELEM | HASH_BLOBS);
	}
	layout = hash_search(layouts, &relid, HASH_ENTER, &found);
	if (!found)
		layout->valid = false;
	if (!layout->valid)
		read_layout(layout, relation);	/* the arrays of an old layout stay in cache_context(): a few bytes */
	return layout;
}

/* -- the buffer ----------------------------------------------------------------------------------- */

static Segment *
segment_for_change(int32 table_id)
{
	MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);
	Segment    *segment;

	if (buffer == NULL)
		buffer = makeStringInfo();
	segment = segments != NIL ? llast(segments) : NULL;
	/* a segment's changes are numbered consecutively: after a rollback or an early write, start another */
	if (segment == NULL || segment->subid != GetCurrentSubTransactionId() ||
		segment->first_ordinal + segment->count != next_ordinal)
	{
		segment = palloc0(sizeof(Segment));
		segment->subid = GetCurrentSubTransactionId();
		segment->offset = buffer->len;
		segment->first_ordinal = next_ordinal;
		segments = lappend(segments, segment);
	}
	segment->tables = list_append_unique_int(segment->tables, table_id);
	MemoryContextSwitchTo(old);
	return segment;
}

/* The index of the first segment of subtransaction subid or of its descendants (the list's length if none). */
static int
first_segment_of(SubTransactionId subid)
{
	int			first = list_length(segments);

	while (first > 0 && ((Segment *) list_nth(segments, first - 1))->subid >= subid)
		first--;
	return first;
}

static void
drop_segments(int first)
{
	if (list_length(segments) <= first)
		return;
	buffer->len = ((Segment *) list_nth(segments, first))->offset;
	buffer->data[buffer->len] = '\0';
	segments = list_truncate(segments, first);
}

/*
 * Which log table is current: pgfanout.switch_log() points capture at the other table by updating
 * agent_state.current_log and rewriting the capture functions, append_changes() among them, in one
 * transaction; the rewrite invalidates pg_proc entries in every backend, and that makes the next write
 * here read current_log again. Until a backend has seen it, it goes on writing into the old table, as
 * PL/pgSQL functions do: the agent reads both tables and empties one only when no open transaction holds
 * it (agent/logswitch.py). The trigger function's owner is looked up again too (ALTER FUNCTION ... OWNER TO).
 */
static void
on_proc_change(Datum arg, int cacheid, uint32 hashvalue)
{
	proc_changes++;
	capture_function = InvalidOid;
}

/* Reads agent_state.current_log, as the owner, when a pg_proc change may have moved it. */
static int32
read_current_log(void)
{
	Identity	caller;
	bool		isnull;
	int32		log;
	uint64		as_of = proc_changes;	/* taken first: a change while this reads makes the next write read again */

	if (current_log != 0 && current_log_as_of == proc_changes)
		return current_log;
	caller = become_owner();
	SPI_connect();
	if (current_log_plan == NULL)
	{
		current_log_plan = SPI_prepare("SELECT current_log::integer FROM pgfanout.agent_state", 0, NULL);
		if (current_log_plan == NULL)
			elog(ERROR, "pgfanout: could not prepare the current log query: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(current_log_plan);
	}
	/* the latest snapshot: a REPEATABLE READ transaction older than a switch still follows it */
	if (SPI_execute_snapshot(current_log_plan, NULL, NULL, GetLatestSnapshot(), InvalidSnapshot, true, false, 1)
		!= SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "pgfanout: pgfanout.agent_state has no row; reinstall capture (pgfanout agent install)");
	log = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	if (isnull || log < 1 || log > 2)
		elog(ERROR, "pgfanout: pgfanout.agent_state.current_log is not 1 or 2");
	SPI_finish();
	restore_identity(caller);
	current_log = log;
	current_log_as_of = as_of;	/* only now: an error above leaves it due for another read */
	return log;
}

/* The columns of a log row, by name: a log table's column order depends on the version that created it. */
enum
{
	LOG_SEQ, LOG_TXID, LOG_TABLE_ID, LOG_OP, LOG_ORDINAL, LOG_CHANGE_COUNT, LOG_TABLE_IDS, LOG_CHANGES,
	LOG_NEW_ROW, LOG_OLD_KEY, LOG_OLD_VALUES, LOG_COLUMNS
};
static const char *const log_column_names[LOG_COLUMNS] = {
	"seq", "txid", "table_id", "op", "ordinal", "change_count", "table_ids", "changes",
	"new_row", "old_key", "old_values"
};
static const Oid log_column_types[LOG_COLUMNS] = {
	INT8OID, XID8OID, INT4OID, CHAROID, INT4OID, INT4OID, INT4ARRAYOID, BYTEAOID,
	TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID
};

static void
refuse_log_table(Relation log_table, const char *column, const char *problem)
{
	ereport(ERROR,
			(errmsg("pgfanout: column \"%s\" of log table \"%s\" %s", column, RelationGetRelationName(log_table),
					problem),
			 errhint("install the pgfanout_capture library of the same pgfanout version (make capture-lib), "
					 "then pgfanout agent install")));
}

/*
 * The log row is written straight into the current log table: a heap insert and its index entries, with
 * seq and txid filled as their defaults would. Through SPI, a prepared INSERT spent more time in executor
 * start and end and plan revalidation than in the insert itself (docs/benchmarks.md). Nothing the executor
 * would have done is lost: log tables have no triggers, rules, row security or constraints but NOT NULL,
 * and map_log_columns() refuses a log table that has any of the others, or any column it does not know,
 * of another type, or NOT NULL and not filled here. Privileges are not checked: this writes only
 * pgfanout's own tables, on behalf of the trigger function's owner.
 *
 * map_log_columns() says which log column each attribute of the table is (LOG_COLUMNS for a dropped
 * one), once per log table rather than per write (see LogTarget).
 */
static int *
map_log_columns(Relation log_table)
{
	TupleDesc	desc = RelationGetDescr(log_table);
	int		   *columns = MemoryContextAlloc(cache_context(), sizeof(int) * (desc->natts > 0 ? desc->natts : 1));
	uint32		filled = 0;		/* a bit per column of log_column_names */

	if (log_table->trigdesc != NULL || log_table->rd_rel->relhasrules || log_table->rd_rel->relrowsecurity ||
		(desc->constr != NULL && desc->constr->num_check > 0))
		ereport(ERROR,
				(errmsg("pgfanout: log table \"%s\" has triggers, rules, row security or CHECK constraints, "
						"which capture would bypass",
						RelationGetRelationName(log_table)),
				 errhint("drop them: the log tables belong to pgfanout")));
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute attribute = TupleDescAttr(desc, i);
		const char *name = NameStr(attribute->attname);
		int			column = 0;

		columns[i] = LOG_COLUMNS;
		if (attribute->attisdropped)
			continue;
		while (column < LOG_COLUMNS && strcmp(log_column_names[column], name) != 0)
			column++;
		if (column == LOG_COLUMNS)
			refuse_log_table(log_table, name, "is unknown to this capture library");
		if (attribute->atttypid != log_column_types[column])
			refuse_log_table(log_table, name, "has another type than this capture library writes");
		if (column >= LOG_NEW_ROW && attribute->attnotnull)	/* columns of the PL/pgSQL triggers' rows */
			refuse_log_table(log_table, name, "is NOT NULL");
		columns[i] = column;
		filled |= 1 << column;
	}
	for (int column = 0; column < LOG_NEW_ROW; column++)
		if (!(filled & (1 << column)))
			refuse_log_table(log_table, log_column_names[column], "is missing");
	return columns;
}

/* fields: a value for each column before LOG_NEW_ROW; the others are NULL in the C trigger's rows */
static void
insert_log_row(ResultRelInfo *result, EState *estate, TupleTableSlot *slot, const int *columns,
			   const Datum *fields)
{
	Relation	log_table = result->ri_RelationDesc;

	ExecClearTuple(slot);
	for (int i = 0; i < RelationGetDescr(log_table)->natts; i++)
	{
		slot->tts_isnull[i] = columns[i] >= LOG_NEW_ROW;
		slot->tts_values[i] = slot->tts_isnull[i] ? (Datum) 0 : fields[columns[i]];
	}
	ExecStoreVirtualTuple(slot);
	table_tuple_insert(log_table, slot, GetCurrentCommandId(true), 0, NULL);
	ExecInsertIndexTuples(result, slot, estate, false, false, NULL, NIL);
	ResetPerTupleExprContext(estate);
}

static Oid
pgfanout_relation(const char *name, char relkind, LOCKMODE lock)
{
	Oid			relid = RangeVarGetRelid(makeRangeVar("pgfanout", (char *) name, -1), lock, false);

	if (get_rel_relkind(relid) != relkind)
		ereport(ERROR,
				(errmsg("pgfanout: pgfanout.%s is not a %s", name, relkind == RELKIND_SEQUENCE ? "sequence" : "table"),
				 errhint("reinstall capture (pgfanout agent install)")));
	return relid;
}

/*
 * The current log table, opened with the lock an INSERT takes, and log_target describing it. Locking
 * takes in the invalidations of other sessions' DDL, so a log table dropped and created again, or
 * altered, is looked up again by name.
 */
static Relation
open_log_table(int32 log)
{
	char		log_name[16];
	Relation	log_table;

	if (log_target.log == log)
	{
		LockRelationOid(log_target.relid, RowExclusiveLock);
		if (log_target.log == log)
			return table_open(log_target.relid, NoLock);
		UnlockRelationOid(log_target.relid, RowExclusiveLock);
	}
	if (log_target.columns != NULL)
		pfree(log_target.columns);
	log_target = (LogTarget) {0};
	snprintf(log_name, sizeof(log_name), "log_%d", log);
	log_table = table_open(pgfanout_relation(log_name, RELKIND_RELATION, RowExclusiveLock), NoLock);
	log_target.sequence = pgfanout_relation("log_seq", RELKIND_SEQUENCE, NoLock);
	log_target.columns = map_log_columns(log_table);
	log_target.relid = RelationGetRelid(log_table);
	log_target.log = log;		/* last: an error above leaves nothing half known */
	return log_table;
}

/* Write the segments from index `first` on into the log, and drop them from the buffer. */
static void
flush_segments(int first)
{
	Identity	caller;
	Relation	log_table;
	Datum		fields[LOG_NEW_ROW];
	EState	   *estate;
	ResultRelInfo *result;
	TupleTableSlot *slot;

	if (list_length(segments) <= first)
		return;
	/* as the owner: writers need no USAGE on the pgfanout schema */
	caller = become_owner();
	log_table = open_log_table(read_current_log());
	restore_identity(caller);
	fields[LOG_TXID] = FullTransactionIdGetDatum(GetTopFullTransactionId());
	fields[LOG_TABLE_ID] = Int32GetDatum(0);
	fields[LOG_OP] = CharGetDatum('P');
	estate = CreateExecutorState();
	result = makeNode(ResultRelInfo);
	InitResultRelInfo(result, log_table, 1, NULL, 0);
	ExecOpenIndices(result, false);
	slot = table_slot_create(log_table, NULL);
	for (int i = first; i < list_length(segments); i++)
	{
		Segment    *segment = list_nth(segments, i);
		int			ntables = list_length(segment->tables);
		Datum	   *tables = palloc(sizeof(Datum) * ntables);
		bytea	   *changes = palloc(VARHDRSZ + segment->length);
		ListCell   *cell;
		int			n = 0;

		if (segment->count == 0)
			continue;
		foreach(cell, segment->tables)
			tables[n++] = Int32GetDatum(lfirst_int(cell));
		SET_VARSIZE(changes, VARHDRSZ + segment->length);
		memcpy(VARDATA(changes), buffer->data + segment->offset, segment->length);
		fields[LOG_SEQ] = Int64GetDatum(nextval_internal(log_target.sequence, false));
		fields[LOG_ORDINAL] = Int32GetDatum(segment->first_ordinal);
		fields[LOG_CHANGE_COUNT] = Int32GetDatum(segment->count);
		fields[LOG_TABLE_IDS] = PointerGetDatum(construct_array(tables, ntables, INT4OID, 4, true, TYPALIGN_INT));
		fields[LOG_CHANGES] = PointerGetDatum(changes);
		insert_log_row(result, estate, slot, log_target.columns, fields);
	}
	ExecDropSingleTupleTableSlot(slot);
	ExecCloseIndices(result);
	FreeExecutorState(estate);
	table_close(log_table, NoLock);
	drop_segments(first);
}

static void
flush_all(void)
{
	if (segments == NIL)
		return;
	PushActiveSnapshot(GetTransactionSnapshot());
	flush_segments(0);
	PopActiveSnapshot();
}

static void
forget_transaction(void)
{
	/* the memory goes with TopTransactionContext */
	buffer = NULL;
	segments = NIL;
	next_ordinal = 0;
}

static void
on_transaction(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PRE_PREPARE:
			flush_all();
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
			forget_transaction();
			break;
		default:
			break;
	}
}

static void
on_subtransaction(SubXactEvent event, SubTransactionId subid, SubTransactionId parent, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
		drop_segments(first_segment_of(subid));
}

void
_PG_init(void)
{
	RegisterXactCallback(on_transaction, NULL);
	CacheRegisterSyscacheCallback(PROCOID, on_proc_change, (Datum) 0);
	CacheRegisterRelcacheCallback(on_relation_change, (Datum) 0);
	RegisterSubXactCallback(on_subtransaction, NULL);
}

/* -- the trigger ---------------------------------------------------------------------------------- */

static bool
iso_date_style(const char *date_style)
{
	return pg_strncasecmp(date_style, "ISO", 3) == 0 && (date_style[3] == '\0' || date_style[3] == ',');
}

/*
 * Whether the session already formats values as the pinned settings would: then pinning them (a GUC nest
 * level, a set and a restore per change) is skipped. The same value, or for DateStyle the ISO style in
 * both: the field order only shapes the other styles' output.
 */
static bool
settings_in_effect(Layout *layout)
{
	for (int i = 0; i < layout->nsettings; i++)
	{
		const char *pinned = layout->setting_values[i];
		const char *current = GetConfigOption(layout->setting_names[i], true, false);

		if (current == NULL)
			return false;
		if (strcmp(current, pinned) == 0)
			continue;
		if (pg_strcasecmp(layout->setting_names[i], "DateStyle") == 0 && iso_date_style(pinned) && iso_date_style(current))
			continue;
		return false;
	}
	return true;
}

static void
append_change(Layout *layout, TriggerData *trigger)
{
	TupleDesc	desc = RelationGetDescr(trigger->tg_relation);
	TriggerEvent event = trigger->tg_event;
	Segment    *segment = segment_for_change(layout->table_id);
	int			before = buffer->len;
	int			op;
	HeapTuple	new_row = NULL, old_row = NULL;
	int			nest = -1;

	if (TRIGGER_FIRED_BY_TRUNCATE(event))
		op = OP_TRUNCATE;
	else if (TRIGGER_FIRED_BY_INSERT(event))
		op = OP_INSERT, new_row = trigger->tg_trigtuple;
	else if (TRIGGER_FIRED_BY_UPDATE(event))
		op = OP_UPDATE, old_row = trigger->tg_trigtuple, new_row = trigger->tg_newtuple;
	else
		op = OP_DELETE, old_row = trigger->tg_trigtuple;

	if (layout->nsettings > 0 && op != OP_TRUNCATE && !settings_in_effect(layout))
	{
		nest = NewGUCNestLevel();
		for (int i = 0; i < layout->nsettings; i++)
			(void) set_config_option(layout->setting_names[i], layout->setting_values[i],
									 superuser() ? PGC_SUSET : PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
									 true, 0, false);
	}
	put_long(buffer, layout->table_id);
	put_long(buffer, op);
	if (new_row != NULL)
		put_values(buffer, layout, NULL, layout->ncolumns, new_row, desc);
	else
	{
		put_long(buffer, 0);	/* values */
		put_long(buffer, 0);	/* nulls */
	}
	if (op == OP_DELETE || (op == OP_UPDATE && key_changed(layout, old_row, new_row, desc)))
	{
		/* key columns are NOT NULL: no nulls array in the schema for them */
		put_long(buffer, layout->nkeys);
		for (int i = 0; i < layout->nkeys; i++)
		{
			bool		isnull;
			Column	   *column = &layout->columns[layout->keys[i]];
			Datum		value = heap_getattr(old_row, column->attnum, desc, &isnull);

			if (isnull)
				elog(ERROR, "pgfanout: key column %d of table %d is NULL", column->attnum, layout->table_id);
			put_value(buffer, column, value);
		}
	}
	put_long(buffer, 0);
	if (old_row != NULL && layout->nolds > 0)
		put_values(buffer, layout, layout->olds, layout->nolds, old_row, desc);
	else
	{
		put_long(buffer, 0);	/* old_values */
		put_long(buffer, 0);	/* old_nulls */
	}
	if (nest >= 0)
		AtEOXact_GUC(true, nest);

	segment->length += buffer->len - before;
	segment->count++;
	next_ordinal++;
	if (buffer->len > FLUSH_BYTES)
	{
		int			first = first_segment_of(GetCurrentSubTransactionId());

		if (buffer->len - ((Segment *) list_nth(segments, first))->offset > FLUSH_BYTES)
			flush_segments(first);
	}
}

Datum
pgfanout_capture(PG_FUNCTION_ARGS)
{
	TriggerData *trigger = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "pgfanout_capture: not called as a trigger");
	if (!TRIGGER_FIRED_AFTER(trigger->tg_event))
		elog(ERROR, "pgfanout_capture: must be an AFTER trigger");
	if (trigger->tg_trigger->tgfoid != capture_function)
	{
		HeapTuple	proc = SearchSysCache1(PROCOID, ObjectIdGetDatum(trigger->tg_trigger->tgfoid));

		if (!HeapTupleIsValid(proc))
			elog(ERROR, "pgfanout_capture: cache lookup failed for function %u", trigger->tg_trigger->tgfoid);
		capture_owner = ((Form_pg_proc) GETSTRUCT(proc))->proowner;
		capture_function = trigger->tg_trigger->tgfoid;
		ReleaseSysCache(proc);
	}
	append_change(layout_of(trigger->tg_relation), trigger);
	return PointerGetDatum(NULL);
}
