# Superset's caches and results live in the cache Redis, which worker hosts granted
# Superset write to: cachelib would unpickle whatever they put there, in the primary's
# web process. Values are read back with only the classes cached results are made of
# (data: numbers, strings, dates, pandas frames; Superset's query status); anything
# else is a cache miss, logged, never run. Writing is cachelib's own format.
# (templates/superset/cache_pickle.py, part of superset_config.py; standard library
# only, so that it is tested on its own: src/components/tests.rs.)
import io as _io
import logging as _logging
import pickle as _pickle

_CACHE_CLASSES = frozenset(
    {
        ("builtins", "slice"),
        ("datetime", "date"),
        ("datetime", "datetime"),
        ("datetime", "time"),
        ("datetime", "timedelta"),
        ("datetime", "timezone"),
        ("decimal", "Decimal"),
        ("uuid", "UUID"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked"),
        ("pandas._libs.internals", "_unpickle_block"),
        ("pandas._libs.missing", "NA"),
        ("pandas._libs.tslibs.nattype", "__nat_unpickle"),
        ("pandas._libs.tslibs.timestamps", "_unpickle_timestamp"),
        ("pandas.core.arrays.boolean", "BooleanArray"),
        ("pandas.core.arrays.boolean", "BooleanDtype"),
        ("pandas.core.arrays.categorical", "Categorical"),
        ("pandas.core.arrays.datetimes", "DatetimeArray"),
        ("pandas.core.arrays.floating", "Float64Dtype"),
        ("pandas.core.arrays.floating", "FloatingArray"),
        ("pandas.core.arrays.integer", "Int64Dtype"),
        ("pandas.core.arrays.integer", "Int32Dtype"),
        ("pandas.core.arrays.integer", "IntegerArray"),
        ("pandas.core.arrays.string_", "StringArray"),
        ("pandas.core.arrays.string_", "StringDtype"),
        ("pandas.core.arrays.timedeltas", "TimedeltaArray"),
        ("pandas.core.dtypes.dtypes", "CategoricalDtype"),
        ("pandas.core.dtypes.dtypes", "DatetimeTZDtype"),
        ("pandas.core.frame", "DataFrame"),
        ("pandas.core.indexes.base", "Index"),
        ("pandas.core.indexes.base", "_new_Index"),
        ("pandas.core.indexes.multi", "MultiIndex"),
        ("pandas.core.indexes.range", "RangeIndex"),
        ("pandas.core.internals.managers", "BlockManager"),
        ("pandas.core.internals.managers", "SingleBlockManager"),
        ("pandas.core.series", "Series"),
        ("superset.common.db_query_status", "QueryStatus"),
    }
)


class _CacheUnpickler(_pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _CACHE_CLASSES:
            return super().find_class(module, name)
        raise _pickle.UnpicklingError("%s.%s is not part of a cached value" % (module, name))


class StackRedisSerializer:
    """cachelib's RedisSerializer (integers as ASCII, anything else `!` + a pickle),
    reading pickles with `_CacheUnpickler`."""

    def dumps(self, value, protocol=_pickle.HIGHEST_PROTOCOL):
        if type(value) is int:
            return str(value).encode("ascii")
        return b"!" + _pickle.dumps(value, protocol)

    def loads(self, value):
        if value is None:
            return None
        if value.startswith(b"!"):
            try:
                return _CacheUnpickler(_io.BytesIO(value[1:])).load()
            except Exception as e:  # a refused class or a malformed value: a miss
                _logging.getLogger("analytics_stack.cache").warning(
                    "a cached value was not loaded: %s", e
                )
                return None
        try:
            return int(value)
        except ValueError:
            return value
