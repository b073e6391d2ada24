"""Data for dml: the shipped bonus experiment, and a DoubleMLData that lives in S3.

Neither is needed to run a model remotely: any ``DoubleMLData`` works, and its arrays travel to
the executor's store once per fit (content-addressed). ``DoubleMLDataS3`` is for users of
DoubleML-Serverless, whose data sat in a bucket.
"""
from __future__ import annotations

import io
import os
from importlib import resources

import numpy as np
import pandas as pd
from doubleml import DoubleMLData
from sklearn.preprocessing import OneHotEncoder, PolynomialFeatures

BONUS_FILE = "penn_jae.dat.gz"  # the file fetch_bonus downloads (sha256 bf209368...0e71a), gzipped
BONUS_X_COLS = ["female", "black", "othrace", "dep1", "dep2", "q2", "q3", "q4", "q5", "q6",
                "agelt35", "agegt54", "durable", "lusd", "husd"]


def load_bonus(return_type: str = "DoubleMLData", polynomial_features: bool = False):
    """The Pennsylvania reemployment bonus experiment, as ``doubleml.datasets.fetch_bonus`` returns it.

    Reads the copy shipped in this package (no network) and applies fetch_bonus's preprocessing
    line for line: treatment groups 0 and 4 only (5,099 rows), ``tg`` 4 -> 1, ``y = log(inuidur1)``,
    ``dep`` dummy-encoded, 15 covariates. ``return_type`` is ``"DoubleMLData"`` or ``"DataFrame"``.
    """
    with resources.files("dml").joinpath("data", BONUS_FILE).open("rb") as f:
        raw_data = pd.read_csv(f, sep=r"\s+", compression="gzip")

    ind = (raw_data["tg"] == 0) | (raw_data["tg"] == 4)
    data = raw_data.copy()[ind]
    data = data.reset_index()  # fetch_bonus: reset_index(inplace=True), deprecated in pandas 3.1
    data["tg"] = data["tg"].replace(4, 1)
    data["inuidur1"] = np.log(data["inuidur1"])

    dummy_enc = OneHotEncoder(drop="first", categories="auto").fit(data.loc[:, ["dep"]])
    xx = dummy_enc.transform(data.loc[:, ["dep"]]).toarray()
    data["dep1"] = xx[:, 0]
    data["dep2"] = xx[:, 1]

    y_col, d_cols, x_cols = "inuidur1", ["tg"], list(BONUS_X_COLS)
    if polynomial_features:
        poly = PolynomialFeatures(2, include_bias=False)
        data_transf = poly.fit_transform(data[x_cols])
        x_cols = list(poly.get_feature_names_out(x_cols))
        data_transf = pd.DataFrame(data_transf, columns=x_cols)
        data = pd.concat((data[[y_col] + d_cols], data_transf), axis=1, sort=False)

    if return_type in ("DataFrame", "pd.DataFrame", "pandas.DataFrame"):
        return data
    if return_type == "DoubleMLData":
        return DoubleMLData(data, y_col, d_cols, x_cols)
    raise ValueError(f"Invalid return_type {return_type!r}: use 'DoubleMLData' or 'DataFrame'.")


class DoubleMLDataS3(DoubleMLData):
    """A ``DoubleMLData`` that knows its place in S3 (``s3://bucket/file_key``).

    ``file_key`` ends in ``.csv`` (portable; floats are written and read back exactly) or ``.pkl``
    (pandas pickle, keeps dtypes). ``endpoint_url`` points at an S3-compatible server (moto, MinIO);
    by default lambdamap's S3 storage uses ``LAMBDAMAP_S3_ENDPOINT_URL`` or AWS.

    Example::

        data = DoubleMLDataS3("my-bucket", "bonus/data.csv", df, "inuidur1", "tg")
        data.store_and_upload_to_s3()
        same = DoubleMLDataS3.from_s3("my-bucket", "bonus/data.csv", "inuidur1", "tg")
    """

    FORMATS = (".csv", ".pkl", ".pickle")

    def __init__(self, bucket: str, file_key: str, data: pd.DataFrame, y_col, d_cols, x_cols=None, z_cols=None,
                 cluster_cols=None, use_other_treat_as_covariate=True, force_all_x_finite=True,
                 force_all_d_finite=True, endpoint_url: str | None = None):
        if os.path.splitext(file_key)[1] not in self.FORMATS:
            raise ValueError(f"file_key {file_key!r} must end in one of {self.FORMATS}")
        super().__init__(data, y_col, d_cols, x_cols, z_cols, cluster_cols, use_other_treat_as_covariate,
                         force_all_x_finite, force_all_d_finite)
        self._bucket = bucket
        self._file_key = file_key
        self._endpoint_url = endpoint_url

    @property
    def bucket(self) -> str:
        """The S3 bucket."""
        return self._bucket

    @property
    def file_key(self) -> str:
        """The object key inside the bucket."""
        return self._file_key

    @property
    def uri(self) -> str:
        """``s3://bucket/file_key``."""
        return f"s3://{self._bucket}/{self._file_key}"

    def store_and_upload_to_s3(self) -> str:
        """Write the data frame to ``s3://bucket/file_key``; return the URI."""
        storage, key = _storage(self.uri, self._endpoint_url)
        storage.put(key, _encode(self.data, self._file_key))
        return self.uri

    @classmethod
    def from_s3(cls, bucket: str, file_key: str, y_col, d_cols, x_cols=None, z_cols=None, cluster_cols=None,
                use_other_treat_as_covariate=True, force_all_x_finite=True, force_all_d_finite=True,
                endpoint_url: str | None = None) -> "DoubleMLDataS3":
        """Read ``s3://bucket/file_key`` (as written by :meth:`store_and_upload_to_s3`) into a new object."""
        storage, key = _storage(f"s3://{bucket}/{file_key}", endpoint_url)
        data = _decode(storage.get(key), file_key)
        return cls(bucket, file_key, data, y_col, d_cols, x_cols, z_cols, cluster_cols,
                   use_other_treat_as_covariate, force_all_x_finite, force_all_d_finite, endpoint_url)


def _storage(uri: str, endpoint_url: str | None):
    from lambdamap.storage import storage_for_uri
    return storage_for_uri(uri, endpoint_url=endpoint_url)


def _encode(df: pd.DataFrame, file_key: str) -> bytes:
    buf = io.BytesIO()
    if file_key.endswith(".csv"):
        df.to_csv(buf, index=False)
    else:
        df.to_pickle(buf, compression=None)
    return buf.getvalue()


def _decode(blob: bytes, file_key: str) -> pd.DataFrame:
    if file_key.endswith(".csv"):
        return pd.read_csv(io.BytesIO(blob))  # the default float parser round-trips (tests check it)
    return pd.read_pickle(io.BytesIO(blob), compression=None)
