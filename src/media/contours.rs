//! Outer contours of a binary mask: one polygon per 8-connected region,
//! traced clockwise along its boundary pixels (Moore-neighbour tracing),
//! with points on straight runs dropped. Holes are not traced.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Neighbour offsets, clockwise on screen (y grows downwards) from east.
const DIRS: [(i64, i64); 8] = [
    (1, 0),
    (1, 1),
    (0, 1),
    (-1, 1),
    (-1, 0),
    (-1, -1),
    (0, -1),
    (1, -1),
];

/// Every region's outer boundary as `[x, y]` pixel coordinates, regions in
/// raster order of their top-left pixel; at most `max_contours` of them (the
/// ones with the most points) holding at most `max_points` points together.
/// The flag is true when regions were left out.
///
/// Memory stays bounded by the mask: one mark a pixel, a fill stack of at
/// most one 4-byte index a pixel, and the kept points. Straight runs are
/// dropped while tracing, so a region's boundary never exists in full (a
/// 40,000,000-pixel line is two points, not 80,000,000), and a region is
/// kept only while it is among the longest.
pub fn outer_contours(
    mask: &[bool],
    width: usize,
    height: usize,
    max_contours: usize,
    max_points: usize,
) -> (Vec<Vec<[u32; 2]>>, bool) {
    let mut seen = vec![false; mask.len()];
    let mut best = Longest::new(max_contours, max_points);
    let mut order = 0usize;
    for y in 0..height {
        for x in 0..width {
            let i = y * width + x;
            if mask[i] && !seen[i] {
                match trace(mask, width, height, (x as i64, y as i64), max_points) {
                    Some(corners) => best.offer(order, corners),
                    None => best.truncated = true,
                }
                order += 1;
                fill(mask, &mut seen, width, height, i);
            }
        }
    }
    best.into_contours()
}

/// The longest contours offered, within a count and a total of points.
struct Longest {
    kept: std::collections::BTreeMap<usize, Vec<[u32; 2]>>,
    /// Shortest first; among equal lengths the latest first, so the
    /// earliest are the ones kept.
    by_length: BinaryHeap<Reverse<(usize, Reverse<usize>)>>,
    points: usize,
    max_contours: usize,
    max_points: usize,
    truncated: bool,
}

impl Longest {
    fn new(max_contours: usize, max_points: usize) -> Self {
        Longest {
            kept: Default::default(),
            by_length: BinaryHeap::new(),
            points: 0,
            max_contours,
            max_points,
            truncated: false,
        }
    }

    fn offer(&mut self, order: usize, contour: Vec<[u32; 2]>) {
        self.points += contour.len();
        self.by_length
            .push(Reverse((contour.len(), Reverse(order))));
        self.kept.insert(order, contour);
        while self.kept.len() > self.max_contours || self.points > self.max_points {
            let Some(Reverse((len, Reverse(shortest)))) = self.by_length.pop() else {
                break;
            };
            self.kept.remove(&shortest);
            self.points -= len;
            self.truncated = true;
        }
    }

    fn into_contours(self) -> (Vec<Vec<[u32; 2]>>, bool) {
        (self.kept.into_values().collect(), self.truncated)
    }
}

fn at(mask: &[bool], width: usize, height: usize, (x, y): (i64, i64)) -> bool {
    x >= 0
        && y >= 0
        && (x as usize) < width
        && (y as usize) < height
        && mask[y as usize * width + x as usize]
}

/// Traces the boundary from `start`, the region's first pixel in raster
/// order (so its west neighbour is background), keeping only its corners;
/// `None` when it has more than `max_points` of them.
fn trace(
    mask: &[bool],
    width: usize,
    height: usize,
    start: (i64, i64),
    max_points: usize,
) -> Option<Vec<[u32; 2]>> {
    let mut corners = Corners::default();
    // Each point is passed on one step late, so that the closing return to
    // the start can be left out.
    let mut pending = start;
    let mut current = start;
    let mut backtrack = 4; // west
    let mut first_step: Option<(i64, i64)> = None;
    let limit = 4 * mask.len() + 8;
    for _ in 0..limit {
        let found = (1..=8).map(|i| (backtrack + i) % 8).find_map(|d| {
            let next = (current.0 + DIRS[d].0, current.1 + DIRS[d].1);
            at(mask, width, height, next).then_some((next, d))
        });
        let Some((next, d)) = found else {
            break; // a single pixel
        };
        if current == start {
            match first_step {
                Some(step) if step == next => break,
                None => first_step = Some(next),
                _ => {}
            }
        }
        // The neighbour checked just before `next` was background: search
        // from it next time, as seen from `next`.
        let before = (
            current.0 + DIRS[(d + 7) % 8].0,
            current.1 + DIRS[(d + 7) % 8].1,
        );
        let offset = (before.0 - next.0, before.1 - next.1);
        backtrack = DIRS.iter().position(|&o| o == offset).unwrap_or(4);
        current = next;
        // The start pixel is kept when the trace passes through it midway
        // (a junction); only the closing return to it is dropped below.
        corners.push(std::mem::replace(&mut pending, current));
        if corners.kept.len() > max_points {
            return None;
        }
    }
    if corners.seen == 0 || pending != start {
        corners.push(pending);
    }
    let points = corners.finish();
    (points.len() <= max_points).then_some(points)
}

/// The corners of a closed boundary fed one point at a time: a turn, or a
/// reversal at the end of a one-pixel-wide line. Which of the first and
/// last points are corners is known only once the boundary has closed.
#[derive(Default)]
struct Corners {
    first: Option<(i64, i64)>,
    second: Option<(i64, i64)>,
    /// The two points before the newest.
    before: (i64, i64),
    last: (i64, i64),
    seen: usize,
    kept: Vec<[u32; 2]>,
}

fn is_corner(a: (i64, i64), b: (i64, i64), c: (i64, i64)) -> bool {
    let (into, out) = ((b.0 - a.0, b.1 - a.1), (c.0 - b.0, c.1 - b.1));
    into.0 * out.1 != into.1 * out.0 || into.0 * out.0 + into.1 * out.1 < 0
}

fn point((x, y): (i64, i64)) -> [u32; 2] {
    [x as u32, y as u32]
}

impl Corners {
    fn push(&mut self, p: (i64, i64)) {
        self.seen += 1;
        match self.seen {
            1 => self.first = Some(p),
            2 => self.second = Some(p),
            _ => {
                if is_corner(self.before, self.last, p) {
                    self.kept.push(point(self.last));
                }
            }
        }
        (self.before, self.last) = (self.last, p);
    }

    fn finish(self) -> Vec<[u32; 2]> {
        let (Some(first), Some(second)) = (self.first, self.second) else {
            return self.first.map(point).into_iter().collect();
        };
        if self.seen < 3 {
            return vec![point(first), point(second)];
        }
        let mut out = Vec::with_capacity(self.kept.len() + 2);
        if is_corner(self.last, first, second) {
            out.push(point(first));
        }
        out.extend(self.kept);
        if is_corner(self.before, self.last, first) {
            out.push(point(self.last));
        }
        out
    }
}

/// Marks every pixel 8-connected to `from` as seen.
fn fill(mask: &[bool], seen: &mut [bool], width: usize, height: usize, from: usize) {
    // Indices fit in 32 bits (the pixel limit is checked at load).
    let mut stack = vec![from as u32];
    seen[from] = true;
    while let Some(i) = stack.pop() {
        let i = i as usize;
        let (x, y) = ((i % width) as i64, (i / width) as i64);
        for (dx, dy) in DIRS {
            let n = (x + dx, y + dy);
            if at(mask, width, height, n) {
                let j = n.1 as usize * width + n.0 as usize;
                if !seen[j] {
                    seen[j] = true;
                    stack.push(j as u32);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(mask: &[bool], width: usize, height: usize) -> Vec<Vec<[u32; 2]>> {
        let (contours, truncated) = outer_contours(mask, width, height, usize::MAX, usize::MAX);
        assert!(!truncated);
        contours
    }

    fn mask(rows: &[&str]) -> (Vec<bool>, usize, usize) {
        let bits = rows
            .iter()
            .flat_map(|r| r.chars().map(|c| c == '#'))
            .collect();
        (bits, rows[0].len(), rows.len())
    }

    #[test]
    fn a_rectangle_is_its_four_corners_clockwise() {
        let (m, w, h) = mask(&["......", ".####.", ".####.", ".####.", "......"]);
        assert_eq!(all(&m, w, h), [vec![[1, 1], [4, 1], [4, 3], [1, 3]]]);
    }

    #[test]
    fn separate_regions_each_get_one_contour_and_holes_are_ignored() {
        let (m, w, h) = mask(&["###...#", "#.#....", "###...#", "......#"]);
        let contours = all(&m, w, h);
        assert_eq!(contours.len(), 3);
        assert_eq!(contours[0], [[0, 0], [2, 0], [2, 2], [0, 2]]);
        assert_eq!(contours[1], [[6, 0]]);
        assert_eq!(contours[2], [[6, 2], [6, 3]]);
    }

    #[test]
    fn a_junction_at_the_start_is_visited_twice() {
        let (m, w, h) = mask(&["...#...", "..#.#..", ".#...#."]);
        assert_eq!(all(&m, w, h), [vec![[3, 0], [5, 2], [3, 0], [1, 2]]]);
    }

    #[test]
    fn diagonal_neighbours_join_and_edges_are_traced() {
        let (m, w, h) = mask(&["#..", ".#.", "..#"]);
        let contours = all(&m, w, h);
        assert_eq!(contours, [vec![[0, 0], [2, 2]]]);
        let (full, w, h) = mask(&["##", "##"]);
        assert_eq!(all(&full, w, h), [vec![[0, 0], [1, 0], [1, 1], [0, 1]]]);
    }

    #[test]
    fn a_long_line_is_its_two_ends() {
        let line = vec![true; 1_000_000];
        assert_eq!(all(&line, 1_000_000, 1), [vec![[0, 0], [999_999, 0]]]);
        assert_eq!(all(&line, 1, 1_000_000), [vec![[0, 0], [0, 999_999]]]);
    }

    #[test]
    fn the_longest_are_kept_within_the_caps_in_raster_order() {
        // A 3x3 block (4 corners), a speck (1), a 2-pixel bar (2), a speck.
        let (m, w, h) = mask(&["###.#.##.#", "###.......", "###......."]);
        assert_eq!(all(&m, w, h).len(), 4);
        let (two, truncated) = outer_contours(&m, w, h, 2, usize::MAX);
        assert!(truncated);
        assert_eq!(
            two,
            [vec![[0, 0], [2, 0], [2, 2], [0, 2]], vec![[6, 0], [7, 0]]]
        );
        // Equal lengths: the earliest stay.
        let (one_speck, _) = outer_contours(&m, w, h, 3, usize::MAX);
        assert_eq!(one_speck[1], [[4, 0]]);
        // Six points in all: the block and the bar.
        let (points, truncated) = outer_contours(&m, w, h, usize::MAX, 6);
        assert!(truncated);
        assert_eq!(points.len(), 2);
        // A region with more corners than allowed is left out alone.
        let (none, truncated) = outer_contours(&m, w, h, usize::MAX, 3);
        assert!(truncated);
        assert_eq!(none, [vec![[4, 0]], vec![[6, 0], [7, 0]]]);
    }
}
