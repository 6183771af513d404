//! Sets of guest pages, one bitmap per RAM region (KVM's dirty-log layout: 64 pages a word,
//! page *p* at bit *p* % 64 of word *p* / 64), and the runs of contiguous pages a stream frame
//! carries.

/// Pages of each region; a region's page *p* is stream page `first[region] + p`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageSet {
    bitmaps: Vec<Vec<u64>>,
    region_pages: Vec<u64>,
}

/// A run of contiguous pages within one region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub region: usize,
    /// First page, counted within the region.
    pub first: u64,
    pub count: u64,
}

impl PageSet {
    /// `bitmaps[r]` covers `region_pages[r]` pages (bits past the end are ignored).
    pub fn new(bitmaps: Vec<Vec<u64>>, region_pages: &[u64]) -> Self {
        assert_eq!(bitmaps.len(), region_pages.len(), "one bitmap per region");
        let mut set = Self {
            bitmaps,
            region_pages: region_pages.to_vec(),
        };
        for (bitmap, &pages) in set.bitmaps.iter_mut().zip(region_pages) {
            bitmap.resize(pages.div_ceil(64) as usize, 0);
            if pages % 64 != 0 {
                if let Some(last) = bitmap.last_mut() {
                    *last &= (1u64 << (pages % 64)) - 1;
                }
            }
        }
        set
    }

    /// The region and the page within it of stream page `page`.
    fn locate(&self, page: u64) -> Option<(usize, u64)> {
        let mut start = 0;
        for (region, &pages) in self.region_pages.iter().enumerate() {
            if page < start + pages {
                return Some((region, page - start));
            }
            start += pages;
        }
        None
    }

    /// Whether stream page `page` is in the set.
    pub fn contains_stream_page(&self, page: u64) -> bool {
        self.locate(page).is_some_and(|(region, page)| {
            self.bitmaps[region][(page / 64) as usize] >> (page % 64) & 1 == 1
        })
    }

    /// The set less the stream pages `pages`.
    pub fn without_stream_pages(&self, pages: &[u64]) -> Self {
        let mut set = self.clone();
        for &page in pages {
            if let Some((region, page)) = self.locate(page) {
                set.bitmaps[region][(page / 64) as usize] &= !(1 << (page % 64));
            }
        }
        set
    }

    /// The set with every page of `other` added (same regions).
    pub fn union(&self, other: &PageSet) -> Self {
        assert_eq!(
            self.region_pages, other.region_pages,
            "sets of the same regions"
        );
        let mut set = self.clone();
        for (mine, theirs) in set.bitmaps.iter_mut().zip(&other.bitmaps) {
            for (word, other_word) in mine.iter_mut().zip(theirs) {
                *word |= other_word;
            }
        }
        set
    }

    pub fn bitmaps(&self) -> &[Vec<u64>] {
        &self.bitmaps
    }

    /// Number of pages in the set.
    pub fn count(&self) -> u64 {
        self.bitmaps
            .iter()
            .flatten()
            .map(|word| u64::from(word.count_ones()))
            .sum()
    }

    /// The runs of contiguous pages, each at most `max` long, in page order.
    pub fn runs(&self, max: u64) -> Vec<Run> {
        let mut runs = Vec::new();
        for (region, bitmap) in self.bitmaps.iter().enumerate() {
            let mut current: Option<Run> = None;
            for (index, &word) in bitmap.iter().enumerate() {
                let mut bits = word;
                if bits == 0 {
                    if let Some(run) = current.take() {
                        runs.push(run);
                    }
                    continue;
                }
                let base = index as u64 * 64;
                for bit in 0..64 {
                    let page = base + bit;
                    if bits & 1 == 1 {
                        match &mut current {
                            Some(run) if run.first + run.count == page && run.count < max => {
                                run.count += 1
                            }
                            _ => {
                                if let Some(run) = current.take() {
                                    runs.push(run);
                                }
                                current = Some(Run {
                                    region,
                                    first: page,
                                    count: 1,
                                });
                            }
                        }
                    }
                    bits >>= 1;
                    if bits == 0 {
                        break;
                    }
                }
            }
            if let Some(run) = current.take() {
                runs.push(run);
            }
        }
        runs
    }

    /// Stream page number of a region's first page.
    pub fn region_start(&self, region: usize) -> u64 {
        self.region_pages[..region].iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_of(pages: &[u64], region_pages: &[u64]) -> PageSet {
        let mut bitmaps: Vec<Vec<u64>> = region_pages
            .iter()
            .map(|p| vec![0; p.div_ceil(64) as usize])
            .collect();
        let mut start = 0;
        for (region, &count) in region_pages.iter().enumerate() {
            for &page in pages {
                if page >= start && page < start + count {
                    let p = page - start;
                    bitmaps[region][(p / 64) as usize] |= 1 << (p % 64);
                }
            }
            start += count;
        }
        PageSet::new(bitmaps, region_pages)
    }

    #[test]
    fn a_union_holds_the_pages_of_both() {
        let regions = [128, 64];
        let a = set_of(&[0, 5, 130], &regions);
        let b = set_of(&[5, 6, 191], &regions);
        let both = a.union(&b);
        assert_eq!(both.count(), 5);
        for page in [0, 5, 6, 130, 191] {
            assert!(both.contains_stream_page(page), "{page}");
        }
        assert!(!both.contains_stream_page(7));
    }

    #[test]
    fn runs_split_at_gaps_limits_and_region_ends() {
        let set = set_of(&[0, 1, 2, 5, 63, 64, 65, 127, 128, 129], &[128, 64]);
        assert_eq!(set.count(), 10);
        let runs: Vec<(usize, u64, u64)> = set
            .runs(256)
            .into_iter()
            .map(|r| (r.region, r.first, r.count))
            .collect();
        assert_eq!(
            runs,
            vec![(0, 0, 3), (0, 5, 1), (0, 63, 3), (0, 127, 1), (1, 0, 2)],
            "the run across a word boundary stays one; the region boundary splits"
        );
        let limited: Vec<u64> = set.runs(2).iter().map(|r| r.count).collect();
        assert_eq!(limited, vec![2, 1, 1, 2, 1, 1, 2]);
        assert_eq!(set.region_start(1), 128);
    }

    #[test]
    fn a_full_bitmap_is_runs_of_the_limit_and_bits_past_the_end_are_dropped() {
        let set = PageSet::new(vec![vec![u64::MAX; 10]], &[600]);
        assert_eq!(set.count(), 600);
        let runs = set.runs(256);
        assert_eq!(
            runs.iter().map(|r| (r.first, r.count)).collect::<Vec<_>>(),
            vec![(0, 256), (256, 256), (512, 88)]
        );
        assert!(PageSet::new(vec![vec![]], &[64]).runs(256).is_empty());
    }

    #[test]
    fn stream_pages_are_found_and_removed_across_regions() {
        let set = PageSet::new(vec![vec![0b1010], vec![0b1]], &[10, 70]);
        assert!(set.contains_stream_page(1) && set.contains_stream_page(3));
        assert!(set.contains_stream_page(10), "page 0 of the second region");
        assert!(!set.contains_stream_page(2) && !set.contains_stream_page(80));
        let less = set.without_stream_pages(&[3, 10, 99]);
        assert_eq!(less.count(), 1);
        assert!(less.contains_stream_page(1) && !less.contains_stream_page(10));
    }
}
