"""Writes the small hostile upload files of this folder (`python tests/corpus/make_corpus.py`).

The files are committed; this script is how they were made and the readable form of their bytes.
Large cases (10 MB lines, a million rows, random bytes) are generated at test time by
`tests/test_hostile.py`, never committed. The report each file must give is in that test's table.
"""
import gzip
import os

BOM = b"\xef\xbb\xbf"
A256 = b"a" * 256
E128 = "\u00e9".encode() * 128          # 256 UTF-8 bytes

FILES = {
    # -- byte order marks --------------------------------------------------------------------
    "utf8-bom-header.csv": BOM + b"Type,Identity\r\ng,g1\r\ni,user2@x.com\r\n",
    "utf8-bom-no-header.csv": BOM + b"g,g1\nG,g2\n",
    "bom-mid-file.csv": b"Type,Identity\ng,g1\n" + BOM + b"g,g2\ni," + BOM + b"user3@x.com\ng,g4" + BOM + b"\n",
    "two-files-concatenated.csv": BOM + b"Type,Identity\r\ng,g1\r\n" + BOM + b"Type,Identity\r\ng,g2\r\n",
    "double-bom.csv": BOM + BOM + b"Type,Identity\ng,g1\n",
    "utf16le-bom.csv": b"\xff\xfe" + "Type,Identity\r\ng,g1\r\n".encode("utf-16-le"),
    "utf16be-bom.csv": b"\xfe\xff" + "Type,Identity\r\ng,g1\r\n".encode("utf-16-be"),
    "utf16le-no-bom-no-header.csv": "g,g1\ng,g2\n".encode("utf-16-le"),
    "utf16-rows-after-utf8-header.csv": b"Type,Identity\n" + "g,g1\ng,g2\n".encode("utf-16-le"),
    # -- line ends -----------------------------------------------------------------------------
    "cr-only.csv": b"Type,Identity\rg,g1\ri,user2@x.com\r\rg,nobody\rx,1\r",
    "mixed-line-ends.csv": b"g,g1\r\ng,g2\rg,g3\n\r\nx,y\n\n\rg,g4",
    # -- quoting -------------------------------------------------------------------------------
    "unterminated-quote.csv": b'Type,Identity\ng,g1\ni,"user2@x.com\ng,g3\ng,g4\n',
    "unterminated-quote-last-row.csv": b'g,g1\ng,g2\ni,"o""brien@x.com""',
    "quotes-in-unquoted-fields.csv": b'i,o"brien@x.com\ni,a"b,c"\ng,g1"\ni, "o""brien@x.com"\n',
    "text-after-closing-quote.csv": b'g,"g1"x\ng,"g2" \ng,"g3" "x"\ng,"g4"\t\n"g"x,g5\ng,"g6"\n',
    "quoted-newlines.csv": b'Type,Identity\ni,"user1@x.com"\ni,"multi\r\nline"\ng,"g2"\n"x",y\n',
    # -- bytes that are not text -----------------------------------------------------------------
    "nul-bytes.csv": b'g,g1\ng,g\x002\n\x00\ng,g3\x00\ni,\x00\n"\x00",g4\ng,"g5\x00"\n',
    "only-nul-bytes.csv": b"\x00" * 4096,
    "invalid-utf8.csv": (b"g,g1\ni,\xc0\xaf\ni,\xed\xa0\x80\ni,\xf4\x90\x80\x80\ni,\xe2\x82\ni,caf\xe9\n"
                         b"i,\xf0\x9f\x98\x80\ni,jos\xc3\xa9@x.com\n\xff,g2\n"),
    "gzipped.csv": gzip.compress(b"Type,Identity\ng,g1\ng,g2\n", mtime=0),
    # -- nothing to upload ---------------------------------------------------------------------
    "only-header.csv": b"Type,Identity\n",
    "only-header-bom-no-newline.csv": BOM + b" identity , TYPE ",
    "only-blank-lines.csv": b"\n\r\n \t \n\r\r\n\t\n",
    "empty.csv": b"",
    # -- headers -------------------------------------------------------------------------------
    "header-extra-column.csv": b"Type,Identity,Extra\ng,g1,x\n",
    "header-semicolons.csv": b"Type;Identity\ng;g1\n",
    "header-quoted.csv": b'"Identity" , "TYPE"\ng1,g\n"user2@x.com",i\n',
    "header-repeated.csv": b"Type,Identity\ng,g1\nType,Identity\ng,g2\n",
    # -- lengths -------------------------------------------------------------------------------
    "long-identities.csv": (b"i," + A256 + b"\ni," + A256 + b"a\ni," + E128 + b"\ni," + E128 + b"a\n"
                            b"i," + A256 + b"   \t\ni,\"  " + A256 + b"  \"\ng," + b"x" * 300 + b"\n"
                            b"gg,x\n" + b"g" * 300 + b",x\ni," + b"a" * 255 + "\u00e9".encode() + b"\n"),
    # -- everything at once --------------------------------------------------------------------
    "mixed.csv": (b"Type,Identity\ng,g1\ni,user1@x.com\nG,g1\ng,nobody\ng,nobody\ni,USER2@X.COM\n"
                  b'"  g  ","  g2  "\nx,g3\ng,\ng,g3,extra\n\ng,g\x003\ni,\xff\ng,"g3"x\ni,user4@x.com\n'
                  b'g,"g5\ng,g6\n'),
}


def main(folder=os.path.dirname(os.path.abspath(__file__))):
    for name, data in FILES.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
