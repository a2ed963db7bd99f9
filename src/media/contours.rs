//! Outer contours of a binary mask: one polygon per 8-connected region,
//! traced clockwise along its boundary pixels (Moore-neighbour tracing),
//! with points on straight runs dropped. Holes are not traced.

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
/// raster order of their top-left pixel.
pub fn outer_contours(mask: &[bool], width: usize, height: usize) -> Vec<Vec<[u32; 2]>> {
    let mut seen = vec![false; mask.len()];
    let mut contours = Vec::new();
    for y in 0..height {
        for x in 0..width {
            let i = y * width + x;
            if mask[i] && !seen[i] {
                let boundary = trace(mask, width, height, (x as i64, y as i64));
                contours.push(drop_straight_runs(boundary));
                fill(mask, &mut seen, width, height, i);
            }
        }
    }
    contours
}

fn at(mask: &[bool], width: usize, height: usize, (x, y): (i64, i64)) -> bool {
    x >= 0
        && y >= 0
        && (x as usize) < width
        && (y as usize) < height
        && mask[y as usize * width + x as usize]
}

/// Traces the boundary from `start`, the region's first pixel in raster
/// order (so its west neighbour is background).
fn trace(mask: &[bool], width: usize, height: usize, start: (i64, i64)) -> Vec<(i64, i64)> {
    let mut points = vec![start];
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
        points.push(current);
    }
    if points.len() > 1 && points.last() == Some(&start) {
        points.pop();
    }
    points
}

/// Marks every pixel 8-connected to `from` as seen.
fn fill(mask: &[bool], seen: &mut [bool], width: usize, height: usize, from: usize) {
    let mut stack = vec![from];
    seen[from] = true;
    while let Some(i) = stack.pop() {
        let (x, y) = ((i % width) as i64, (i / width) as i64);
        for (dx, dy) in DIRS {
            let n = (x + dx, y + dy);
            if at(mask, width, height, n) {
                let j = n.1 as usize * width + n.0 as usize;
                if !seen[j] {
                    seen[j] = true;
                    stack.push(j);
                }
            }
        }
    }
}

/// Keeps only the corners of a closed boundary (a turn, or a reversal at
/// the end of a one-pixel-wide line).
fn drop_straight_runs(points: Vec<(i64, i64)>) -> Vec<[u32; 2]> {
    let n = points.len();
    if n < 3 {
        return points.iter().map(|&(x, y)| [x as u32, y as u32]).collect();
    }
    (0..n)
        .filter(|&i| {
            let (a, b, c) = (points[(i + n - 1) % n], points[i], points[(i + 1) % n]);
            let (into, out) = ((b.0 - a.0, b.1 - a.1), (c.0 - b.0, c.1 - b.1));
            into.0 * out.1 != into.1 * out.0 || into.0 * out.0 + into.1 * out.1 < 0
        })
        .map(|i| [points[i].0 as u32, points[i].1 as u32])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            outer_contours(&m, w, h),
            [vec![[1, 1], [4, 1], [4, 3], [1, 3]]]
        );
    }

    #[test]
    fn separate_regions_each_get_one_contour_and_holes_are_ignored() {
        let (m, w, h) = mask(&["###...#", "#.#....", "###...#", "......#"]);
        let contours = outer_contours(&m, w, h);
        assert_eq!(contours.len(), 3);
        assert_eq!(contours[0], [[0, 0], [2, 0], [2, 2], [0, 2]]);
        assert_eq!(contours[1], [[6, 0]]);
        assert_eq!(contours[2], [[6, 2], [6, 3]]);
    }

    #[test]
    fn a_junction_at_the_start_is_visited_twice() {
        let (m, w, h) = mask(&["...#...", "..#.#..", ".#...#."]);
        assert_eq!(
            outer_contours(&m, w, h),
            [vec![[3, 0], [5, 2], [3, 0], [1, 2]]]
        );
    }

    #[test]
    fn diagonal_neighbours_join_and_edges_are_traced() {
        let (m, w, h) = mask(&["#..", ".#.", "..#"]);
        let contours = outer_contours(&m, w, h);
        assert_eq!(contours, [vec![[0, 0], [2, 2]]]);
        let (full, w, h) = mask(&["##", "##"]);
        assert_eq!(
            outer_contours(&full, w, h),
            [vec![[0, 0], [1, 0], [1, 1], [0, 1]]]
        );
    }
}
