#!/bin/sh
# Run in the image's build with UNUSED=drop, after the packages are installed: removes what a
# member never runs. The packages still count as installed, so the image's dpkg database stays
# consistent and `apt-get install` in a derived image works; a derived image that needs these
# files back runs `apt-get install --reinstall perl-modules-5.36 libperl5.36 locales`.
#
# - Perl's library beyond perl-base (47 MB): Debian's postgresql-common tools are Perl
#   (pg_ctlcluster, pg_lsclusters, the /usr/bin/psql wrapper), but pgwarden runs PostgreSQL's
#   own binaries from /usr/lib/postgresql/15/bin (first on the image's PATH) and never those
#   tools; the maintainer scripts that needed them have run. perl-base stays (debconf, dpkg).
# - The locale sources (17 MB), used only by locale-gen: clusters use C.UTF-8 (built into
#   glibc) or ICU collations, which need neither.
set -eu
rm -rf /usr/share/perl/5.36.0 /usr/share/perl/5.36 \
    /usr/lib/x86_64-linux-gnu/perl/5.36.0 /usr/lib/x86_64-linux-gnu/perl/5.36 \
    /usr/lib/aarch64-linux-gnu/perl/5.36.0 /usr/lib/aarch64-linux-gnu/perl/5.36 \
    /usr/share/i18n
# perl-base alone still runs what dpkg and debconf need.
perl -e 'use strict; use warnings; use Getopt::Long; exit 0'
